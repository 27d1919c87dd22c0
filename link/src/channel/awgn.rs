//! Analog (value) noise, the paper's ŷ = h·y + n with n ~ N(0, σ²) and σ² = P_y / γ̄, where P_y
//! is the mean power of the packet's values; the instantaneous SNR is then g·γ̄. The receiver's
//! [`Equalizer`] then estimates y: zero-forcing divides by h, MMSE by h + 1/(h·γ̄).

use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use super::{Equalizer, Impairment, Packet};

#[derive(Debug, Clone)]
pub struct Awgn {
    mean_snr: f64,
    equalizer: Equalizer,
}

impl Awgn {
    pub fn new(mean_snr_db: f64, equalizer: Equalizer) -> Self {
        Self { mean_snr: 10f64.powf(mean_snr_db / 10.0), equalizer }
    }
}

impl Impairment for Awgn {
    fn name(&self) -> &'static str {
        "awgn"
    }

    fn apply(&mut self, p: &mut Packet<'_>, rng: &mut StdRng) {
        if p.lost || p.values.is_empty() {
            return;
        }
        let power = p.values.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / p.values.len() as f64;
        let sigma = (power / self.mean_snr).sqrt();
        let h = p.gain.sqrt();
        let gain = match self.equalizer {
            Equalizer::None => 1.0,
            Equalizer::ZeroForcing if h > 0.0 => 1.0 / h,
            Equalizer::ZeroForcing => 1.0,
            Equalizer::Mmse => h / (p.gain + 1.0 / self.mean_snr),
        };
        let mut noise_energy = 0.0;
        for v in p.values.iter_mut() {
            let n: f64 = StandardNormal.sample(rng);
            let n = n * sigma;
            noise_energy += n * n;
            let y = h * f64::from(*v) + n;
            *v = (gain * y) as f32;
        }
        p.signal_energy += power * p.gain * p.values.len() as f64;
        p.noise_energy += noise_energy;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Realized SNR over 10⁵ samples within 5 standard errors of the target. The noise power
    /// estimate is σ²·χ²(N)/N, relative standard deviation √(2/N) ≈ 0.45%, i.e. ±0.098 dB at
    /// 5 sigma.
    #[test]
    fn realized_snr_is_the_target_within_its_confidence_band() {
        let n = 100_000usize;
        let band_db = 10.0 * (1.0 + 5.0 * (2.0 / n as f64).sqrt()).log10();
        for snr_db in [0.0, 10.0, 20.0] {
            let mut awgn = Awgn::new(snr_db, Equalizer::None);
            let mut rng = StdRng::seed_from_u64(7);
            let clean: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
            let mut values = clean.clone();
            let mut p = Packet::new(&mut values, 1.0);
            awgn.apply(&mut p, &mut rng);
            let signal: f64 = clean.iter().map(|&v| f64::from(v).powi(2)).sum();
            let noise: f64 = clean.iter().zip(&values).map(|(&a, &b)| (f64::from(b) - f64::from(a)).powi(2)).sum();
            let realized = 10.0 * (signal / noise).log10();
            assert!((realized - snr_db).abs() < band_db, "target {snr_db} dB, realized {realized:.4} dB (band ±{band_db:.3})");
        }
    }

    #[test]
    fn equalization_removes_the_gain() {
        let mut values = vec![1.0f32; 1000];
        let mut p = Packet::new(&mut values, 1.0);
        p.gain = 0.25; // h = 0.5
        let mut rng = StdRng::seed_from_u64(3);
        Awgn::new(60.0, Equalizer::ZeroForcing).apply(&mut p, &mut rng);
        let mean = values.iter().sum::<f32>() / 1000.0;
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        let mut values = vec![1.0f32; 1000];
        let mut p = Packet::new(&mut values, 1.0);
        p.gain = 0.25;
        Awgn::new(60.0, Equalizer::None).apply(&mut p, &mut rng);
        let mean = values.iter().sum::<f32>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }
}
