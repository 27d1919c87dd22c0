//! Digital packet loss from outage: a packet is lost when its instantaneous SNR g·γ̄ falls below
//! γ_th = 2^(R/B) − 1 (rate R on bandwidth B). With Nakagami-m fading the outage probability is
//! P(m, m·γ_th/γ̄). A lost packet is retransmitted up to `retransmissions` times, each attempt
//! with a fresh fading draw and its own air time (HARQ), no more than a latency budget allows;
//! if every attempt fails it is erased.

use rand::rngs::StdRng;

use super::fading::Fading;
use super::math::regularized_lower_gamma;
use super::{Impairment, Packet};

#[derive(Debug, Clone)]
pub struct OutageLoss {
    mean_snr: f64,
    threshold: f64,
    retransmissions: u32,
    /// A tighter cap on this packet's retransmissions (HARQ's latency budget), set by the channel.
    pub limit: Option<u32>,
    /// Fading for the fresh draws of retransmissions; `None` means a static channel.
    fading: Option<Fading>,
}

impl OutageLoss {
    pub fn new(mean_snr_db: f64, rate_bps: f64, bandwidth_hz: f64, retransmissions: u32, fading: Option<Fading>) -> Self {
        Self {
            mean_snr: 10f64.powf(mean_snr_db / 10.0),
            threshold: threshold(rate_bps, bandwidth_hz),
            retransmissions,
            limit: None,
            fading,
        }
    }
}

/// γ_th = 2^(R/B) − 1.
pub fn threshold(rate_bps: f64, bandwidth_hz: f64) -> f64 {
    2f64.powf(rate_bps / bandwidth_hz) - 1.0
}

/// Outage probability of one attempt: P(m, m·γ_th/γ̄) with fading, else 1 if γ̄ < γ_th.
pub fn outage_probability(m: Option<f64>, mean_snr_db: f64, rate_bps: f64, bandwidth_hz: f64) -> f64 {
    let mean_snr = 10f64.powf(mean_snr_db / 10.0);
    let th = threshold(rate_bps, bandwidth_hz);
    match m {
        Some(m) => regularized_lower_gamma(m, m * th / mean_snr),
        None => f64::from(u8::from(mean_snr < th)),
    }
}

impl Impairment for OutageLoss {
    fn name(&self) -> &'static str {
        "outage-loss"
    }

    fn apply(&mut self, p: &mut Packet<'_>, rng: &mut StdRng) {
        let mut gain = p.gain;
        p.attempts = 1;
        let retransmissions = self.limit.map_or(self.retransmissions, |l| l.min(self.retransmissions));
        while gain * self.mean_snr < self.threshold {
            if p.attempts > retransmissions {
                p.lost = true;
                return;
            }
            p.attempts += 1;
            gain = self.fading.as_ref().map_or(gain, |f| f.draw(rng));
        }
        p.gain = gain;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Loss rate over 10⁵ packets within 5 binomial standard errors of P(m, m·γ_th/γ̄).
    #[test]
    fn loss_rate_matches_the_analytical_outage_probability() {
        let n = 100_000;
        let (rate, bw) = (2.0e6, 1.0e6); // γ_th = 3 (4.77 dB)
        for (m, snr_db) in [(0.5, 10.0), (1.0, 8.0), (3.0, 6.0), (1.0, 15.0)] {
            let mut fading = Fading::new(m, 1);
            let mut loss = OutageLoss::new(snr_db, rate, bw, 0, Some(fading.clone()));
            let mut rng = StdRng::seed_from_u64(9);
            let mut values = [0f32; 1];
            let lost = (0..n)
                .filter(|_| {
                    let mut p = Packet::new(&mut values, 1.0);
                    fading.apply(&mut p, &mut rng);
                    loss.apply(&mut p, &mut rng);
                    p.lost
                })
                .count();
            let want = outage_probability(Some(m), snr_db, rate, bw);
            let got = lost as f64 / n as f64;
            let se = (want * (1.0 - want) / n as f64).sqrt();
            assert!((got - want).abs() < 5.0 * se, "m={m} snr={snr_db}: loss {got:.5}, outage {want:.5} (±{:.5})", 5.0 * se);
        }
    }

    /// With r retransmissions a packet is lost only if all r + 1 independent attempts fail.
    #[test]
    fn retransmissions_cut_loss_to_the_power_of_attempts() {
        let n = 100_000;
        let (m, snr_db, rate, bw) = (1.0, 6.0, 2.0e6, 1.0e6);
        let mut fading = Fading::new(m, 1);
        let mut loss = OutageLoss::new(snr_db, rate, bw, 2, Some(fading.clone()));
        let mut rng = StdRng::seed_from_u64(5);
        let mut values = [0f32; 1];
        let (mut lost, mut attempts) = (0usize, 0u64);
        for _ in 0..n {
            let mut p = Packet::new(&mut values, 1.0);
            fading.apply(&mut p, &mut rng);
            loss.apply(&mut p, &mut rng);
            lost += usize::from(p.lost);
            attempts += u64::from(p.attempts);
        }
        let q = outage_probability(Some(m), snr_db, rate, bw);
        let want = q.powi(3);
        let se = (want * (1.0 - want) / n as f64).sqrt();
        assert!((lost as f64 / n as f64 - want).abs() < 5.0 * se, "loss {} vs {want}", lost as f64 / n as f64);
        // Expected attempts: 1 + q + q².
        let mean_attempts = attempts as f64 / n as f64;
        assert!((mean_attempts - (1.0 + q + q * q)).abs() < 0.01, "{mean_attempts}");
    }
}
