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
    if tokens.len() < 2 {
        return Err(Error::InvalidArgument(format!("need at least 2 tokens to score, got {}", tokens.len())));
    }
    let starts: Vec<usize> = (0..tokens.len())
        .step_by(cfg.stride)
        .take_while(|&b| b == 0 || b + cfg.window - cfg.stride < tokens.len())
        .collect();
    let started = Instant::now();
    let (mut nll, mut scored, mut prev_end) = (0f64, 0usize, 0usize);
    for (w, &begin) in starts.iter().enumerate() {
        let end = (begin + cfg.window).min(tokens.len());
        // Targets are the tokens at positions first_target..end, predicted from position − 1.
        let first_target = prev_end.max(begin + 1);
        if first_target >= end {
            break;
        }
        let mut ue = KvCache::new(split.ue_layers());
        let mut edge = KvCache::new(split.edge_layers(model.n_layers()));
        let h = model.embed(&tokens[begin..end])?;
        let h = model.run_layers(&h, &mut ue)?;
        let h = boundary.transmit(&h)?;
        let h = model.run_layers(&h, &mut edge)?;
        let rows = h.narrow(1, first_target - 1 - begin, end - first_target)?;
        let logp = candle_nn::ops::log_softmax(&model.head(&rows)?, D::Minus1)?;
        let targets = Tensor::new(&tokens[first_target..end], model.device())?.unsqueeze(1)?;
        let picked = logp.gather(&targets, 1)?.i((.., 0))?.to_vec1::<f32>()?;
        nll -= picked.iter().map(|&x| f64::from(x)).sum::<f64>();
        scored += picked.len();
        prev_end = end;
        progress(w + 1, starts.len());
        if end == tokens.len() {
            break;
        }
    }
    let mean_nll = nll / scored as f64;
    Ok(PplReport {
        ppl: mean_nll.exp(),
        mean_nll,
        scored_tokens: scored,
        windows: starts.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}
