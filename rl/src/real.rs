//! The real environment: the split model in process, the channel at the boundary, scored by
//! perplexity on the evaluation text. Every call of [`RealEnv::ppl`] is one real evaluation; it
//! is counted and timed, since saving them is the point of the surrogate.
//!
//! The layers before the boundary see no channel, so their outputs are the same for every
//! channel state and seed: they are computed once, clean, for every boundary `0..=L`, and an
//! evaluation at split `k` runs only the channel, layers `k..L` and the head. The result is the
//! perplexity [`split_core::perplexity::perplexity`] gives for the same split and channel.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Tensor;
use split_core::boundary::Boundary;
use split_core::channel::{Preset, preset};
use split_core::boundary::ChannelBoundary;
use split_core::channel::{Channel, ChannelConfig};
use split_core::calibration::Calibration;
use split_core::model::{KvCache, SplitModel};
use split_core::transform::LinkSetup;
use split_core::perplexity::{PplConfig, Window, score, windows};
use split_core::wire::WireDType;

/// A channel state: what the policy observes and the profile's grid spans.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChannelState {
    /// Nakagami-m block fading with analog noise at this mean SNR, and outage loss (one
    /// retransmission, then erasure): the emulator's `good`/`bad`/trace channel with these values.
    Fading { snr_db: f64, m: f64 },
    /// The authors' reference mode: every element zeroed with probability `p`.
    Erasure { p: f64 },
}

impl ChannelState {
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Fading { .. } => "fading",
            Self::Erasure { .. } => "erasure",
        }
    }

    /// The channel this state stands for: for fading, the emulator's presets with this SNR and m.
    pub fn channel(&self) -> ChannelConfig {
        match *self {
            Self::Fading { snr_db, m } => ChannelConfig { snr_db, fading_m: Some(m), ..preset(Preset::Good, &ChannelConfig::default()) },
            Self::Erasure { p } => ChannelConfig { erasure_p: Some(p), ..ChannelConfig::default() },
        }
    }
}

impl std::fmt::Display for ChannelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fading { snr_db, m } => write!(f, "{snr_db} dB, m {m}"),
            Self::Erasure { p } => write!(f, "p {p}"),
        }
    }
}

struct CachedWindow {
    window: Window,
    /// The clean hidden state at every boundary `0..=L` (`[1, seq, hidden]`).
    boundaries: Vec<Tensor>,
}

pub struct RealEnv {
    model: SplitModel,
    tokens: Vec<u32>,
    windows: Vec<CachedWindow>,
    clean_ppl: f64,
    dtype: WireDType,
    evaluations: usize,
    seconds: f64,
}

impl RealEnv {
    /// Scores `tokens` (already cut to the per-evaluation budget) with windows of `cfg`, sending
    /// the hidden state in `dtype`. Runs the model once, clean, to cache every boundary.
    pub fn new(model: SplitModel, tokens: Vec<u32>, cfg: PplConfig, dtype: WireDType) -> Result<Self> {
        cfg.validate(model.config().context_length)?;
        let plan = windows(tokens.len(), cfg)?;
        let n = model.n_layers();
        let mut cached = Vec::with_capacity(plan.len());
        let (mut nll, mut scored) = (0f64, 0usize);
        for window in plan {
            let mut h = model.embed(&tokens[window.begin..window.end])?;
            let mut boundaries = vec![h.clone()];
            for l in 0..n {
                h = model.run_layers(&h, &mut KvCache::new(l..l + 1))?;
                boundaries.push(h.clone());
            }
            let (s, c) = score(&model, &h, &tokens, &window)?;
            nll += s;
            scored += c;
            cached.push(CachedWindow { window, boundaries });
        }
        let clean_ppl = (nll / scored as f64).exp();
        Ok(Self { model, tokens, windows: cached, clean_ppl, dtype, evaluations: 0, seconds: 0.0 })
    }

    pub fn model(&self) -> &SplitModel {
        &self.model
    }

    pub fn n_layers(&self) -> usize {
        self.model.n_layers()
    }

    /// Perplexity with no channel (any split: the wire is lossless).
    pub fn clean_ppl(&self) -> f64 {
        self.clean_ppl
    }

    /// Tokens scored per evaluation.
    pub fn scored_tokens(&self) -> usize {
        self.windows.iter().map(|w| w.window.end - w.window.first_target).sum()
    }

    /// Real evaluations so far, and the seconds they took.
    pub fn evaluations(&self) -> usize {
        self.evaluations
    }

    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    /// Milliseconds one decoder layer takes for one decode step here (median of `reps` steps over
    /// all layers, after a 64-token prefill): the edge's per-layer cost in the latency model.
    pub fn layer_decode_ms(&self, reps: usize) -> Result<f64> {
        let n = self.n_layers();
        let w = &self.windows[0];
        let prefix = (w.window.end - w.window.begin).min(64);
        let mut cache = KvCache::new(0..n);
        self.model.run_layers(&w.boundaries[0].narrow(1, 0, prefix)?, &mut cache)?;
        let mut times = Vec::with_capacity(reps);
        for i in 0..reps.max(1) {
            let tok = self.tokens[(w.window.begin + prefix + i) % self.tokens.len()];
            let h = self.model.embed(&[tok])?;
            let started = Instant::now();
            self.model.run_layers(&h, &mut cache)?;
            times.push(started.elapsed().as_secs_f64() * 1e3 / n as f64);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    /// Bytes of one token's hidden state on the wire.
    pub fn hidden_bytes(&self) -> usize {
        self.model.config().hidden_size * self.dtype.size()
    }

    /// One real evaluation: the perplexity at split `k` through `state`, the channel seeded by
    /// `seed` (the same arguments give the same number).
    pub fn ppl(&mut self, k: usize, state: ChannelState, seed: u64) -> Result<f64> {
        anyhow::ensure!(k <= self.n_layers(), "split {k} is outside 0..={}", self.n_layers());
        let setup = LinkSetup { dtype: self.dtype, ..LinkSetup::default() };
        self.ppl_link(k, &state.channel(), setup, None, seed).with_context(|| format!("channel {state}"))
    }

    /// One real evaluation of any link: the UE's normalization and codec (`setup`), `channel`
    /// seeded by `seed`, the edge's decoding and concealment, at split `k`.
    pub fn ppl_link(&mut self, k: usize, channel: &ChannelConfig, setup: LinkSetup, calibration: Option<&Calibration>, seed: u64) -> Result<f64> {
        Ok(self.nll_link(k, channel, setup, calibration, seed)?.exp())
    }

    /// [`Self::ppl_link`] as the mean negative log-likelihood per scored token.
    pub fn nll_link(&mut self, k: usize, channel: &ChannelConfig, setup: LinkSetup, calibration: Option<&Calibration>, seed: u64) -> Result<f64> {
        let n = self.n_layers();
        anyhow::ensure!(k <= n, "split {k} is outside 0..={n}");
        let started = Instant::now();
        let mut boundary = ChannelBoundary::new(Channel::new(channel.clone(), seed)?, setup, calibration, k)?;
        let (mut nll, mut scored) = (0f64, 0usize);
        for w in &self.windows {
            let h = boundary.transmit(&w.boundaries[k], 0)?;
            let h = self.model.run_layers(&h, &mut KvCache::new(k..n))?;
            let (s, c) = score(&self.model, &h, &self.tokens, &w.window)?;
            nll += s;
            scored += c;
        }
        self.evaluations += 1;
        self.seconds += started.elapsed().as_secs_f64();
        Ok(nll / scored as f64)
    }
}
