//! The reward of choosing split `k` in a channel state (docs/design.md, Model-based RL): a weighted trade-off of
//! quality, UE load, latency and switching, or the authors' reward as a preset.
//!
//! - quality: `PPL_clean / PPL` in (0, 1] (weighted) or `(PPL_clean − PPL) / PPL_clean` ≤ 0 (paper);
//! - UE load: `(L − k) / L`, 1 with nothing on the UE;
//! - latency: `1 − t(k, state) / t_max`, `t` = k UE layers + airtime of the hidden state at
//!   Shannon's rate + (L − k) edge layers + propagation, from measured per-layer times;
//! - switching: `−1` when `k` differs from the split in force.

use split_core::channel::loss::outage_probability;

use crate::real::ChannelState;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Weights {
    Weighted { quality: f64, load: f64, latency: f64, switch: f64 },
    /// The paper's reward, `α·(PPL_init − PPL_new)/PPL_init + β·(k_max − k)/k_max` (no latency,
    /// no switching cost), with PPL_init taken as the clean perplexity `PPL_clean` (the model's
    /// own, without a channel), which is what [`RewardModel::quality`] computes.
    Paper { alpha: f64, beta: f64 },
}

impl Weights {
    pub const DEFAULT: Self = Self::Weighted { quality: 1.0, load: 0.1, latency: 0.1, switch: 0.02 };

    pub fn describe(&self) -> String {
        match *self {
            Self::Weighted { quality, load, latency, switch } => format!(
                "{quality}·PPL_clean/PPL + {load}·(L−k)/L + {latency}·(1 − t/t_max) − {switch}·[k changed]"
            ),
            Self::Paper { alpha, beta } => format!("{alpha}·(PPL_clean − PPL)/PPL_clean + {beta}·(L − k)/L (the paper's reward)"),
        }
    }
}

/// Per-token latency of a split: compute on both sides and the hidden state on the air.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Latency {
    /// One decoder layer for one token on the edge, measured.
    pub edge_layer_ms: f64,
    /// The same on the UE (the edge's time × the UE's slowdown).
    pub ue_layer_ms: f64,
    /// Bytes of one token's hidden state on the wire.
    pub hidden_bytes: f64,
    /// Bandwidth for Shannon's rate `B·log2(1 + γ̄)`.
    pub bandwidth_hz: f64,
    /// Rate in the erasure mode (no SNR there).
    pub fixed_rate_bps: f64,
    pub propagation_ms: f64,
}

impl Latency {
    pub fn ms(&self, k: usize, n_layers: usize, state: &ChannelState) -> f64 {
        let rate = match *state {
            ChannelState::Fading { snr_db, .. } => self.bandwidth_hz * (1.0 + 10f64.powf(snr_db / 10.0)).log2(),
            ChannelState::Erasure { .. } => self.fixed_rate_bps,
        };
        k as f64 * self.ue_layer_ms + (n_layers - k) as f64 * self.edge_layer_ms + self.hidden_bytes * 8.0 / rate * 1e3 + self.propagation_ms
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RewardModel {
    pub weights: Weights,
    pub n_layers: usize,
    pub clean_ppl: f64,
    pub latency: Latency,
    /// The latency that scores 0: everything on the UE at the worst SNR of the state space.
    pub max_latency_ms: f64,
}

impl RewardModel {
    pub fn new(weights: Weights, n_layers: usize, clean_ppl: f64, latency: Latency, worst_snr_db: f64) -> Self {
        let worst = ChannelState::Fading { snr_db: worst_snr_db, m: 1.0 };
        let max_latency_ms = (0..=n_layers).map(|k| latency.ms(k, n_layers, &worst)).fold(0.0, f64::max);
        Self { weights, n_layers, clean_ppl, latency, max_latency_ms }
    }

    /// The quality term alone.
    pub fn quality(&self, ppl: f64) -> f64 {
        match self.weights {
            Weights::Weighted { .. } => self.clean_ppl / ppl,
            Weights::Paper { .. } => (self.clean_ppl - ppl) / self.clean_ppl,
        }
    }

    /// The reward of `k` in `state` with perplexity `ppl`, `prev` the split in force (`None` at
    /// the start: no switching cost).
    pub fn reward(&self, k: usize, prev: Option<usize>, state: &ChannelState, ppl: f64) -> f64 {
        let l = self.n_layers as f64;
        let load = (l - k as f64) / l;
        match self.weights {
            Weights::Weighted { quality, load: w_load, latency, switch } => {
                let lat = 1.0 - self.latency.ms(k, self.n_layers, state) / self.max_latency_ms;
                let switched = prev.is_some_and(|p| p != k);
                quality * self.quality(ppl) + w_load * load + latency * lat - if switched { switch } else { 0.0 }
            }
            Weights::Paper { alpha, beta } => alpha * self.quality(ppl) + beta * load,
        }
    }

    pub fn switch_cost(&self) -> f64 {
        match self.weights {
            Weights::Weighted { switch, .. } => switch,
            Weights::Paper { .. } => 0.0,
        }
    }
}

/// The packet loss rate the emulator's outage model gives in a fading state (for the threshold
/// table, which reads SNR and loss): outage at γ_th = 0 dB on both attempts (one retransmission),
/// as the emulator counts a lost packet.
pub fn loss_rate(state: &ChannelState) -> f64 {
    match *state {
        ChannelState::Fading { snr_db, m } => outage_probability(Some(m), snr_db, 1e6, 1e6).powi(2),
        ChannelState::Erasure { .. } => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(weights: Weights) -> RewardModel {
        let lat = Latency { edge_layer_ms: 0.5, ue_layer_ms: 1.5, hidden_bytes: 1152.0, bandwidth_hz: 20e6, fixed_rate_bps: 100e6, propagation_ms: 1.0 };
        RewardModel::new(weights, 30, 40.0, lat, -5.0)
    }

    #[test]
    fn paper_preset_is_the_authors_formula() {
        let r = model(Weights::Paper { alpha: 2.0, beta: 0.5 });
        let s = ChannelState::Erasure { p: 0.1 };
        let got = r.reward(6, Some(3), &s, 50.0);
        assert!((got - (2.0 * (40.0 - 50.0) / 40.0 + 0.5 * 24.0 / 30.0)).abs() < 1e-12, "{got}");
    }

    #[test]
    fn weighted_reward_trades_quality_against_load_latency_and_switching() {
        let r = model(Weights::DEFAULT);
        let s = ChannelState::Fading { snr_db: 10.0, m: 1.0 };
        // Same perplexity: fewer UE layers is better (load and latency), and moving costs.
        assert!(r.reward(0, None, &s, 40.0) > r.reward(10, None, &s, 40.0));
        assert!((r.reward(10, Some(10), &s, 40.0) - r.reward(10, Some(3), &s, 40.0) - 0.02).abs() < 1e-12);
        // Clean perplexity, k = 0: quality 1 + load 0.1 + latency in (0, 0.1).
        let best = r.reward(0, None, &s, 40.0);
        assert!(best > 1.1 && best < 1.2, "{best}");
        // Latency grows with k (the UE is slower) and with a worse SNR (airtime).
        assert!(r.latency.ms(30, 30, &s) > r.latency.ms(0, 30, &s));
        assert!(r.latency.ms(0, 30, &ChannelState::Fading { snr_db: -5.0, m: 1.0 }) > r.latency.ms(0, 30, &s));
    }

    #[test]
    fn outage_loss_rate_falls_with_snr() {
        let bad = loss_rate(&ChannelState::Fading { snr_db: 0.0, m: 1.0 });
        let good = loss_rate(&ChannelState::Fading { snr_db: 20.0, m: 3.0 });
        assert!(bad > 0.3 && good < 1e-6, "{bad} {good}");
    }
}
