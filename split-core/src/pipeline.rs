//! Running the model in one process, whole or split, and generating text with it.

use std::time::{Duration, Instant};

use candle_core::Tensor;

use crate::boundary::Boundary;
use crate::error::Result;
use crate::model::{KvCache, SplitModel};
use crate::sampling::{Sampled, Sampler};
use crate::split::SplitPoint;
use crate::tokenizer::Tokenizer;

/// Something that takes the next tokens and returns the logits of the last one.
pub trait Forward {
    fn forward(&mut self, tokens: &[u32]) -> Result<Tensor>;
}

/// The unsplit model: one cache over all layers.
pub struct Monolithic<'m> {
    model: &'m SplitModel,
    cache: KvCache,
}

impl<'m> Monolithic<'m> {
    pub fn new(model: &'m SplitModel) -> Self {
        Self { model, cache: KvCache::new(0..model.n_layers()) }
    }
}

impl Forward for Monolithic<'_> {
    fn forward(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let h = self.model.embed(tokens)?;
        let h = self.model.run_layers(&h, &mut self.cache)?;
        self.model.head_last(&h)
    }
}

/// The split model in one process: UE layers `0..k` with their cache, the boundary, edge layers
/// `k..L` with theirs.
pub struct InProcessSplit<'m> {
    model: &'m SplitModel,
    ue: KvCache,
    edge: KvCache,
    boundary: Box<dyn Boundary + 'm>,
    /// Time spent on each side, for the breakdown `generate` prints.
    pub ue_time: Duration,
    pub edge_time: Duration,
}

impl<'m> InProcessSplit<'m> {
    pub fn new(model: &'m SplitModel, split: SplitPoint, boundary: Box<dyn Boundary + 'm>) -> Self {
        Self {
            model,
            ue: KvCache::new(split.ue_layers()),
            edge: KvCache::new(split.edge_layers(model.n_layers())),
            boundary,
            ue_time: Duration::ZERO,
            edge_time: Duration::ZERO,
        }
    }

    /// Runs the UE side and the boundary: token ids → the hidden state the edge receives.
    pub fn ue_side(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let t = Instant::now();
        let position = self.edge.position();
        let h = self.model.embed(tokens)?;
        let h = self.model.run_layers(&h, &mut self.ue)?;
        self.ue_time += t.elapsed();
        self.boundary.transmit(&h, position)
    }

    /// Runs the edge layers on a received hidden state; returns the final hidden state.
    pub fn edge_side(&mut self, hidden: &Tensor) -> Result<Tensor> {
        let t = Instant::now();
        let h = self.model.run_layers(hidden, &mut self.edge)?;
        self.edge_time += t.elapsed();
        Ok(h)
    }
}

impl Forward for InProcessSplit<'_> {
    fn forward(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let h = self.ue_side(tokens)?;
        let h = self.edge_side(&h)?;
        self.model.head_last(&h)
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    MaxTokens,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<Sampled>,
    pub stop: StopReason,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

/// Prefills `prompt`, then generates up to `max_new_tokens`, calling `on_token` as each arrives.
/// Stops early at an end-of-sequence token when `stop_at_eos`.
pub fn generate(
    f: &mut dyn Forward,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    max_new_tokens: usize,
    sampler: &mut Sampler,
    stop_at_eos: bool,
    on_token: &mut dyn FnMut(Sampled) -> Result<()>,
) -> Result<Generation> {
    let t = Instant::now();
    let mut logits = f.forward(prompt)?;
    let prefill_time = t.elapsed();
    let t = Instant::now();
    let mut tokens = Vec::with_capacity(max_new_tokens);
    let mut stop = StopReason::MaxTokens;
    for i in 0..max_new_tokens {
        let next = sampler.sample(&logits.to_vec1::<f32>()?)?;
        tokens.push(next);
        on_token(next)?;
        if stop_at_eos && tokenizer.is_eos(next.id) {
            stop = StopReason::Eos;
            break;
        }
        if i + 1 < max_new_tokens {
            logits = f.forward(&[next.id])?;
        }
    }
    Ok(Generation { tokens, stop, prefill_time, decode_time: t.elapsed() })
}
