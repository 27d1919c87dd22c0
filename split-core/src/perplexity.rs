//! Perplexity of a (possibly split) model on a token sequence, with a sliding window.
//!
//! Windows of `window` tokens start every `stride` tokens; each window scores only the targets the
//! previous one did not, so every token after the first is scored exactly once, with up to
//! `window − stride` tokens of context from before its window (the Hugging Face recipe). Each
//! window starts from an empty KV cache and its hidden state crosses the boundary as one prefill.

use std::time::Instant;

use candle_core::{D, IndexOp, Tensor};

use crate::boundary::Boundary;
use crate::error::{Error, Result};
use crate::model::{KvCache, SplitModel};
use crate::split::SplitPoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PplConfig {
    pub window: usize,
    pub stride: usize,
}

impl PplConfig {
    pub fn validate(&self, context_length: usize) -> Result<()> {
        if self.window < 2 {
            return Err(Error::InvalidArgument(format!("window {} must be at least 2 tokens", self.window)));
        }
        if self.stride == 0 || self.stride > self.window {
            return Err(Error::InvalidArgument(format!("stride {} must be in 1..={}", self.stride, self.window)));
        }
        if self.window > context_length {
            return Err(Error::InvalidArgument(format!(
                "window {} exceeds the model's context of {context_length}",
                self.window
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PplReport {
    pub ppl: f64,
    pub mean_nll: f64,
    pub scored_tokens: usize,
    pub windows: usize,
    pub seconds: f64,
}

/// Progress after each window: `(windows done, windows total)`.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Perplexity of `tokens` with layers `0..k` and `k..L` on either side of `boundary`.
pub fn perplexity(
    model: &SplitModel,
    tokens: &[u32],
    cfg: PplConfig,
    split: SplitPoint,
    boundary: &mut dyn Boundary,
    progress: Progress<'_>,
) -> Result<PplReport> {
    cfg.validate(model.config().context_length)?;
    let plan = windows(tokens.len(), cfg)?;
    let started = Instant::now();
    let (mut nll, mut scored) = (0f64, 0usize);
    for (w, win) in plan.iter().enumerate() {
        let mut ue = KvCache::new(split.ue_layers());
        let mut edge = KvCache::new(split.edge_layers(model.n_layers()));
        let h = model.embed(&tokens[win.begin..win.end])?;
        let h = model.run_layers(&h, &mut ue)?;
        let h = boundary.transmit(&h, 0)?;
        let h = model.run_layers(&h, &mut edge)?;
        let (sum, n) = score(model, &h, tokens, win)?;
        nll += sum;
        scored += n;
        progress(w + 1, plan.len());
    }
    let mean_nll = nll / scored as f64;
    Ok(PplReport {
        ppl: mean_nll.exp(),
        mean_nll,
        scored_tokens: scored,
        windows: plan.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One window of the sliding-window recipe: the model sees `tokens[begin..end]` and scores the
/// targets `first_target..end` (each predicted from the position before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub begin: usize,
    pub end: usize,
    pub first_target: usize,
}

/// The windows that score every token of a `n_tokens` sequence after the first exactly once.
pub fn windows(n_tokens: usize, cfg: PplConfig) -> Result<Vec<Window>> {
    if n_tokens < 2 {
        return Err(Error::InvalidArgument(format!("need at least 2 tokens to score, got {n_tokens}")));
    }
    let mut out = Vec::new();
    let mut prev_end = 0;
    for begin in (0..n_tokens).step_by(cfg.stride).take_while(|&b| b == 0 || b + cfg.window - cfg.stride < n_tokens) {
        let end = (begin + cfg.window).min(n_tokens);
        let first_target = prev_end.max(begin + 1);
        if first_target >= end {
            break;
        }
        out.push(Window { begin, end, first_target });
        prev_end = end;
        if end == n_tokens {
            break;
        }
    }
    Ok(out)
}

/// The summed negative log-likelihood of the window's targets and their number, from the final
/// hidden state `h` (`[1, end − begin, hidden]`) of the window.
pub fn score(model: &SplitModel, h: &Tensor, tokens: &[u32], win: &Window) -> Result<(f64, usize)> {
    let picked = target_logprobs(model, h, win.first_target - 1 - win.begin, &tokens[win.first_target..win.end])?;
    Ok((window_nll(&picked), picked.len()))
}

/// The log-probability of `targets[i]` predicted from row `first_row + i` of the final hidden
/// state `h` (`[1, rows, hidden]`): the head and a log-softmax on those rows only. The edge's
/// scoring mode calls this too, so the networked score is the in-process one.
pub fn target_logprobs(model: &SplitModel, h: &Tensor, first_row: usize, targets: &[u32]) -> Result<Vec<f32>> {
    let rows = h.narrow(1, first_row, targets.len())?;
    let logp = candle_nn::ops::log_softmax(&model.head(&rows)?, D::Minus1)?;
    let targets = Tensor::new(targets, model.device())?.unsqueeze(1)?;
    Ok(logp.gather(&targets, 1)?.i((.., 0))?.to_vec1::<f32>()?)
}

/// A window's summed negative log-likelihood from its targets' log-probabilities, in the order
/// [`perplexity`] adds them (in f64).
pub fn window_nll(logprobs: &[f32]) -> f64 {
    -logprobs.iter().map(|&x| f64::from(x)).sum::<f64>()
}
