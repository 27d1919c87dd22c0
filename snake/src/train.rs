//! Training the adapters: the UE's layers on the serving model, the channel at the split, the
//! edge's layers in f32 with their adapters, AdamW with the gradients clipped to a global norm.

use std::ops::Range;
use std::time::Instant;

use candle_core::{Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use split_core::boundary::{Boundary, ChannelBoundary};
use split_core::calibration::Calibration;
use split_core::channel::{Channel, ChannelConfig};
use split_core::model::{KvCache, SplitModel};
use split_core::transform::LinkSetup;

use crate::model::EdgeStack;

/// The link the training injects at the split (docs/snake.md): a channel, the transmitter and
/// receiver around it, and the calibration they need.
#[derive(Debug, Clone)]
pub struct TrainLink {
    pub channel: ChannelConfig,
    pub setup: LinkSetup,
    pub calibration: Option<Calibration>,
}

impl TrainLink {
    /// The hidden state `[1, seq, hidden]` at split `k` after the link, with the channel seeded by
    /// `seed`.
    pub fn send(&self, hidden: &Tensor, k: usize, seed: u64) -> anyhow::Result<Tensor> {
        let mut boundary = ChannelBoundary::new(Channel::new(self.channel.clone(), seed)?, self.setup, self.calibration.as_ref(), k)?;
        Ok(boundary.transmit(hidden, 0)?)
    }
}

/// A node's text, tokenized.
#[derive(Debug, Clone)]
pub struct Shard {
    pub name: String,
    pub tokens: Vec<u32>,
}

/// The optimizer and the examples (docs/snake.md fixes these values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    pub lr: f64,
    pub weight_decay: f64,
    /// The global gradient norm is clipped to this.
    pub clip: f64,
    /// Tokens per example.
    pub window: usize,
    /// The probability that an example crosses the channel (otherwise a clean link).
    pub p_channel: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { lr: 1e-3, weight_decay: 0.01, clip: 1.0, window: 256, p_channel: 0.5 }
    }
}

/// One optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepLog {
    pub loss: f64,
    /// Before clipping.
    pub grad_norm: f64,
    pub channel: bool,
    pub seconds: f64,
}

/// The hidden state `[1, seq, hidden]` after the UE's layers `0..k` for `tokens`.
pub fn ue_state(model: &SplitModel, tokens: &[u32], k: usize) -> anyhow::Result<Tensor> {
    let mut cache = KvCache::new(0..k);
    let h = model.embed(tokens)?;
    Ok(model.run_layers(&h, &mut cache)?)
}

/// AdamW over some of an [`EdgeStack`]'s adapters, with its own stream of examples.
pub struct Trainer {
    vars: Vec<Var>,
    opt: AdamW,
    cfg: TrainConfig,
    rng: StdRng,
}

impl Trainer {
    /// Trains `layers` (absolute indices) of `stack`.
    pub fn new(stack: &EdgeStack, layers: Range<usize>, cfg: TrainConfig, seed: u64) -> anyhow::Result<Self> {
        let vars = stack.vars(layers.clone());
        anyhow::ensure!(!vars.is_empty(), "layers {layers:?} hold no adapters (the edge has {}..{})", stack.first, stack.n_layers());
        let params = ParamsAdamW { lr: cfg.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: cfg.weight_decay };
        let opt = AdamW::new(vars.clone(), params)?;
        Ok(Self { vars, opt, cfg, rng: StdRng::seed_from_u64(seed) })
    }

    /// Bytes of trainable state this trainer holds: the variables, their gradients and AdamW's
    /// two moments (4 f32 per parameter).
    pub fn state_bytes(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count() * 4 * 4).sum()
    }

    /// One step on a window drawn from one of `shards` (chosen uniformly).
    pub fn step(&mut self, stack: &EdgeStack, ue: &SplitModel, link: &TrainLink, shards: &[&Shard]) -> anyhow::Result<StepLog> {
        let started = Instant::now();
        let shard = shards[self.rng.random_range(0..shards.len())];
        let w = self.cfg.window;
        anyhow::ensure!(shard.tokens.len() > w + 1, "shard {} has {} tokens, fewer than a window of {w}", shard.name, shard.tokens.len());
        let begin = self.rng.random_range(0..shard.tokens.len() - w - 1);
        let tokens = &shard.tokens[begin..begin + w];
        let targets = &shard.tokens[begin + 1..begin + w + 1];
        let channel = self.rng.random_bool(self.cfg.p_channel);
        let seed: u64 = self.rng.random();
        let h = ue_state(ue, tokens, stack.first)?;
        let h = if channel { link.send(&h, stack.first, seed)? } else { h };
        let loss = stack.loss(&h.squeeze(0)?, targets)?;
        let mut grads = loss.backward()?;
        let mut sq = 0f64;
        for v in &self.vars {
            if let Some(g) = grads.get(v) {
                sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        let grad_norm = sq.sqrt();
        anyhow::ensure!(grad_norm.is_finite(), "gradient norm is {grad_norm}");
        if grad_norm > self.cfg.clip {
            let factor = self.cfg.clip / grad_norm;
            for v in &self.vars {
                if let Some(g) = grads.get(v) {
                    let scaled = (g * factor)?;
                    grads.insert(v, scaled);
                }
            }
        }
        self.opt.step(&grads)?;
        Ok(StepLog { loss: loss.to_scalar::<f32>()? as f64, grad_norm, channel, seconds: started.elapsed().as_secs_f64() })
    }
}
