//! Nakagami-m block fading: per coherence block of packets, power gain g ~ Gamma(m, 1/m), so
//! E[g] = 1 and Var[g] = 1/m; amplitude h = √g. m = 1 is Rayleigh; large m approaches no fading.

use rand::rngs::StdRng;
use rand_distr::{Distribution, Gamma};

use super::{Impairment, Packet};

#[derive(Debug, Clone)]
pub struct Fading {
    gamma: Gamma<f64>,
    coherence_packets: usize,
    left_in_block: usize,
    gain: f64,
}

impl Fading {
    /// `m >= 0.5` is checked by the channel config.
    pub fn new(m: f64, coherence_packets: usize) -> Self {
        Self {
            gamma: Gamma::new(m, 1.0 / m).expect("m was validated"),
            coherence_packets: coherence_packets.max(1),
            left_in_block: 0,
            gain: 1.0,
        }
    }

    /// A fresh power gain, independent of the current block (a retransmission's new attempt).
    pub fn draw(&self, rng: &mut StdRng) -> f64 {
        self.gamma.sample(rng)
    }
}

impl Impairment for Fading {
    fn name(&self) -> &'static str {
        "fading"
    }

    fn apply(&mut self, p: &mut Packet<'_>, rng: &mut StdRng) {
        if self.left_in_block == 0 {
            self.gain = self.gamma.sample(rng);
            self.left_in_block = self.coherence_packets;
        }
        self.left_in_block -= 1;
        p.gain = self.gain;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Mean 1 and m̂ = E[g]²/Var[g] close to m, over 10⁵ draws. Tolerances are 5 standard errors:
    /// the mean's is √(1/(mN)); m̂'s relative one follows from Var(s²) = (2 + 6/m)σ⁴/N
    /// (a Gamma's excess kurtosis is 6/m) plus the mean's share, 4/(mN).
    #[test]
    fn power_gain_has_mean_one_and_estimated_m_close_to_m() {
        let n = 100_000;
        for m in [0.5, 1.0, 3.0] {
            let f = Fading::new(m, 1);
            let mut rng = StdRng::seed_from_u64(42);
            let g: Vec<f64> = (0..n).map(|_| f.draw(&mut rng)).collect();
            let mean = g.iter().sum::<f64>() / n as f64;
            let var = g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let m_hat = mean * mean / var;
            let nf = n as f64;
            assert!((mean - 1.0).abs() < 5.0 * (1.0 / (m * nf)).sqrt(), "m={m}: mean {mean}");
            let rel = ((2.0 + 6.0 / m) / nf + 4.0 / (m * nf)).sqrt();
            assert!((m_hat / m - 1.0).abs() < 5.0 * rel, "m={m}: m̂ {m_hat} (tolerance {:.3})", 5.0 * rel);
        }
    }

    #[test]
    fn gain_is_constant_within_a_coherence_block() {
        let mut f = Fading::new(1.0, 4);
        let mut rng = StdRng::seed_from_u64(1);
        let mut values = [0f32; 1];
        let gains: Vec<f64> = (0..8)
            .map(|_| {
                let mut p = Packet::new(&mut values, 1.0);
                f.apply(&mut p, &mut rng);
                p.gain
            })
            .collect();
        assert!(gains[..4].iter().all(|&g| g == gains[0]) && gains[4..].iter().all(|&g| g == gains[4]));
        assert_ne!(gains[0], gains[4]);
    }
}
