//! Channel traces: sequences of channel states a policy meets, one decision per state.
//!
//! Training episodes are drawn at random (seeded) from four kinds: the two mobility scenarios of
//! the emulator, a random walk in SNR, and alternation between a good and a bad channel. The
//! held-out evaluation traces come from the same generators with seeds and parameters training
//! never uses.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use split_core::channel::trace::Mobility;

use crate::real::ChannelState;

/// The SNR range the policies are trained on (the profile's grid spans it); observations outside
/// are clamped to it.
pub const SNR_RANGE: (f64, f64) = (-5.0, 40.0);
/// Nakagami m range of the state space.
pub const M_RANGE: (f64, f64) = (1.0, 3.0);

#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub name: String,
    pub states: Vec<ChannelState>,
}

fn fading(snr_db: f64, m: f64) -> ChannelState {
    ChannelState::Fading { snr_db, m }
}

/// `n` states of a mobility scenario, one every `every_ms`.
pub fn mobility(m: &Mobility, n: usize, every_ms: u64, seed: u64) -> Vec<ChannelState> {
    let t = m.trace(n as u64 * every_ms, every_ms.min(100), seed);
    (0..n).map(|i| {
        let p = t.at(i as u64 * every_ms);
        fading(p.snr_db, p.m.unwrap_or(M_RANGE.1))
    })
    .collect()
}

/// A training episode of `len` states, drawn from one of the four kinds.
pub fn training_episode(rng: &mut StdRng, len: usize) -> Vec<ChannelState> {
    match rng.random_range(0..4) {
        0 => mobility(&Mobility::PEDESTRIAN, len, rng.random_range(5_000..60_000), rng.random()),
        1 => mobility(&Mobility::VEHICULAR, len, rng.random_range(500..6_000), rng.random()),
        2 => {
            let mut snr = rng.random_range(SNR_RANGE.0..SNR_RANGE.1);
            let m = [1.0, 1.5, 2.0, 3.0][rng.random_range(0..4)];
            let step = Normal::new(0.0, rng.random_range(1.0..6.0)).expect("positive sd");
            (0..len)
                .map(|_| {
                    snr = (snr + step.sample(rng)).clamp(SNR_RANGE.0 - 5.0, SNR_RANGE.1 + 5.0);
                    fading(snr, m)
                })
                .collect()
        }
        _ => {
            let good = (rng.random_range(12.0..35.0), rng.random_range(2.0..3.0));
            let bad = (rng.random_range(-5.0..10.0), rng.random_range(1.0..1.5));
            let dwell = rng.random_range(1..5);
            (0..len).map(|i| if (i / dwell) % 2 == 0 { fading(good.0, good.1) } else { fading(bad.0, bad.1) }).collect()
        }
    }
}

/// The held-out traces of the evaluation: a pedestrian walk (a state a minute), a vehicular
/// drive (every 6 s), and an alternating channel with jittered levels, `per_trace` states each.
pub fn heldout(per_trace: usize, seed: u64) -> Vec<Trace> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0ff5);
    let jitter = Normal::new(0.0, 2.0).expect("positive sd");
    let alternating = (0..per_trace)
        .map(|i| if (i / 2) % 2 == 0 { fading(20.0 + jitter.sample(&mut rng), 3.0) } else { fading(5.0 + jitter.sample(&mut rng), 1.0) })
        .collect();
    vec![
        Trace { name: "pedestrian".into(), states: mobility(&Mobility::PEDESTRIAN, per_trace, 60_000, seed.wrapping_add(1_000_001)) },
        Trace { name: "vehicular".into(), states: mobility(&Mobility::VEHICULAR, per_trace, 6_000, seed.wrapping_add(1_000_002)) },
        Trace { name: "alternating".into(), states: alternating },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn episodes_are_seeded_and_span_good_and_bad_channels() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..200).flat_map(|_| training_episode(&mut rng, 16)).collect::<Vec<_>>()
        };
        let a = draw(3);
        assert_eq!(a, draw(3));
        assert_ne!(a, draw(4));
        let snrs: Vec<f64> = a.iter().map(|s| if let ChannelState::Fading { snr_db, .. } = s { *snr_db } else { f64::NAN }).collect();
        assert!(snrs.iter().any(|&s| s < 3.0) && snrs.iter().any(|&s| s > 25.0));
        assert!(snrs.iter().all(|s| s.is_finite()));
        let h = heldout(10, 0);
        assert_eq!(h.iter().map(|t| t.states.len()).sum::<usize>(), 30);
        assert_eq!(h, heldout(10, 0));
    }
}
