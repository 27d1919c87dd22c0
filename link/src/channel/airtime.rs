//! Air time and delay of a message: every attempt of every packet is serialized at the link rate,
//! fixed or Shannon's B·log2(1 + γ) at the attempt's instantaneous SNR, plus propagation and
//! processing delay once per message.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinkModel {
    /// Fixed link rate; `None` uses Shannon's rate on `bandwidth_hz` at each packet's SNR.
    pub rate_bps: Option<f64>,
    pub bandwidth_hz: f64,
    pub propagation_ms: f64,
}

impl LinkModel {
    /// Seconds to send `bits` once at instantaneous linear SNR `snr`.
    pub fn serialization_s(&self, bits: f64, snr: f64) -> f64 {
        let rate = self.rate_bps.unwrap_or_else(|| self.bandwidth_hz * (1.0 + snr.max(0.0)).log2());
        if rate > 0.0 { bits / rate } else { f64::INFINITY }
    }

    pub fn propagation(&self) -> Duration {
        Duration::from_secs_f64(self.propagation_ms.max(0.0) / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_shannon_rates() {
        let fixed = LinkModel { rate_bps: Some(1e6), bandwidth_hz: 1e6, propagation_ms: 1.0 };
        assert!((fixed.serialization_s(8_000.0, 0.0) - 0.008).abs() < 1e-12);
        let shannon = LinkModel { rate_bps: None, bandwidth_hz: 1e6, propagation_ms: 0.0 };
        // γ = 3 → log2(4) = 2 bit/s/Hz → 2 Mb/s.
        assert!((shannon.serialization_s(8_000.0, 3.0) - 0.004).abs() < 1e-12);
        assert_eq!(fixed.propagation(), Duration::from_millis(1));
    }
}
