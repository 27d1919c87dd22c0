//! Measuring a model's calibration statistics ([`crate::calibration`]): the hidden state at every
//! boundary `0..=L`, over windows of calibration text that is never scored (by default the Brown
//! "learned" genre, [`crate::corpus::calibration_slice`]; the evaluation text is the news genre).
//! Each window starts at position 0, so position 0's statistics come from one row per window.

use crate::calibration::{Accumulator, BoundaryStats, Calibration, FORMAT, allocation_gains};
use crate::error::{Error, Result};
use crate::model::{KvCache, SplitModel};

/// Statistics at every boundary of `model` over `tokens`, cut into windows of `window` tokens
/// that each start from an empty cache. `progress(done, total)` after each window.
pub fn boundary_stats(model: &SplitModel, tokens: &[u32], window: usize, progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<BoundaryStats>> {
    if window == 0 || window > model.config().context_length {
        return Err(Error::InvalidArgument(format!("window {window} must be in 1..={}", model.config().context_length)));
    }
    if tokens.is_empty() {
        return Err(Error::InvalidArgument("no calibration tokens".into()));
    }
    let n = model.n_layers();
    let hidden = model.config().hidden_size;
    // Every row, positions ≥ 1, and position 0, per boundary.
    let mut acc = vec![[Accumulator::new(hidden), Accumulator::new(hidden), Accumulator::new(hidden)]; n + 1];
    let mut add = |k: usize, h: &candle_core::Tensor| -> Result<()> {
        let v = h.flatten_all()?.to_vec1::<f32>()?;
        acc[k][0].add(&v);
        acc[k][1].add(&v[hidden..]);
        acc[k][2].add(&v[..hidden]);
        Ok(())
    };
    let chunks: Vec<&[u32]> = tokens.chunks(window).filter(|c| c.len() >= 2).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut h = model.embed(chunk)?;
        add(0, &h)?;
        for l in 0..n {
            h = model.run_layers(&h, &mut KvCache::new(l..l + 1))?;
            add(l + 1, &h)?;
        }
        progress(i + 1, chunks.len());
    }
    Ok(acc.iter().enumerate().map(|(k, [all, rest, first])| Accumulator::finish(k, all, rest, first)).collect())
}

/// A whole calibration file's contents for `model` (named `name`, file sha256 `sha256`), with the
/// transmit gains of the last boundary from the head's sensitivity
/// ([`SplitModel::head_sensitivity`]; `k < L` have no closed-form sensitivity and get none).
pub fn calibrate(
    model: &SplitModel,
    name: &str,
    sha256: &str,
    text_label: &str,
    tokens: &[u32],
    window: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Calibration> {
    let mut boundaries = boundary_stats(model, tokens, window, progress)?;
    let last = boundaries.last_mut().expect("boundaries 0..=L");
    last.gain = allocation_gains(&last.std, &model.head_sensitivity()?);
    Ok(Calibration {
        format: FORMAT.into(),
        model: name.into(),
        model_sha256: sha256.into(),
        text: text_label.into(),
        tokens: tokens.len(),
        hidden: model.config().hidden_size,
        boundaries,
        file_sha256: String::new(),
    })
}
