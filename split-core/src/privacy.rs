//! How much of the input the hidden state after layer k gives away: two token-inversion attacks
//! by an eavesdropper who sees the boundary state on the radio and knows the model.
//!
//! - **Nearest embedding**: each row is read as the input token whose embedding is closest in
//!   cosine. At k = 0 the row *is* the embedding, so this recovers (almost) every token.
//! - **Linear probe**: an affine map from the boundary state to the input token's embedding,
//!   fitted by ridge regression on calibration text (never the text it is scored on), then the
//!   nearest embedding of its output. Each row is standardized with the calibration statistics
//!   of its boundary first (position 0 with its own), so the massive dimensions do not swamp the
//!   fit; λ is [`RIDGE`] times the number of fitting rows.
//!
//! The recovery rate (share of positions whose token an attack names exactly) per k is the
//! privacy table; the decision problem's `k_min` is the shallowest split from which every deeper
//! split keeps the stronger attack's rate at or below a target.

use candle_core::{D, Device, Tensor};

use crate::calibration::Calibration;
use crate::error::{Error, Result};
use crate::model::{KvCache, SplitModel};

/// Ridge strength per fitting row, on standardized features (each of unit variance).
pub const RIDGE: f64 = 1e-3;

/// The input embeddings of every token id, each row scaled to unit length: `[vocab, hidden]`.
pub fn unit_embeddings(model: &SplitModel) -> Result<Tensor> {
    let vocab = model.config().vocab_size as u32;
    let mut rows = Vec::new();
    for start in (0..vocab).step_by(4096) {
        let ids: Vec<u32> = (start..(start + 4096).min(vocab)).collect();
        rows.push(model.embed(&ids)?.squeeze(0)?);
    }
    unit_rows(&Tensor::cat(&rows, 0)?)
}

fn unit_rows(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}

/// The token each row of `x` (`[rows, hidden]`) names: the nearest of `unit_embeddings` in cosine.
pub fn nearest_tokens(x: &Tensor, unit_embeddings: &Tensor) -> Result<Vec<u32>> {
    let scores = unit_rows(x)?.matmul(&unit_embeddings.t()?)?;
    Ok(scores.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

/// Rows of `h` (`[rows, hidden]`, the first at position `position0`) standardized with
/// boundary `k`'s statistics, with a constant 1 appended for the probe's bias: `[rows, hidden + 1]`.
fn features(h: &[f32], hidden: usize, position0: usize, calibration: &Calibration, k: usize, device: &Device) -> Result<Tensor> {
    let b = calibration.boundary(k)?;
    let rows = h.len() / hidden;
    let mut out = Vec::with_capacity(rows * (hidden + 1));
    for (r, row) in h.chunks(hidden).enumerate() {
        let (mean, std) = b.row(position0 + r);
        out.extend(row.iter().zip(mean).zip(std).map(|((&x, &m), &s)| (x - m) / s.max(1e-6)));
        out.push(1.0);
    }
    Ok(Tensor::from_vec(out, (rows, hidden + 1), device)?)
}

/// The normal equations of one boundary's probe, accumulated window by window.
struct Normal {
    n: usize,
    m: usize,
    rows: usize,
    /// XᵀX, `n × n`, and XᵀY, `n × m`, row-major.
    xtx: Vec<f64>,
    xty: Vec<f64>,
}

impl Normal {
    fn new(n: usize, m: usize) -> Self {
        Self { n, m, rows: 0, xtx: vec![0.0; n * n], xty: vec![0.0; n * m] }
    }

    /// Adds the rows of `x` (`[rows, n]`) with their targets `y` (`[rows, m]`). The products of
    /// one window are taken in f32 by candle's matmul and summed across windows in f64.
    fn add(&mut self, x: &Tensor, y: &Tensor) -> Result<()> {
        let xt = x.t()?;
        let add = |acc: &mut [f64], t: Tensor| -> Result<()> {
            acc.iter_mut().zip(t.flatten_all()?.to_vec1::<f32>()?).for_each(|(a, v)| *a += f64::from(v));
            Ok(())
        };
        add(&mut self.xtx, xt.matmul(x)?)?;
        add(&mut self.xty, xt.matmul(y)?)?;
        self.rows += x.dim(0)?;
        Ok(())
    }

    /// The ridge solution `(XᵀX + λI)⁻¹ XᵀY` with λ = [`RIDGE`] · rows.
    fn solve(mut self) -> Result<Vec<f64>> {
        let lambda = RIDGE * self.rows as f64;
        for i in 0..self.n {
            self.xtx[i * self.n + i] += lambda;
        }
        cholesky_solve(&mut self.xtx, self.n, &mut self.xty, self.m)?;
        Ok(self.xty)
    }
}

/// Solves `A X = B` in place for a symmetric positive definite `a` (`n × n`, overwritten by its
/// Cholesky factor) and `b` (`n × m`, overwritten by X).
pub fn cholesky_solve(a: &mut [f64], n: usize, b: &mut [f64], m: usize) -> Result<()> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return Err(Error::InvalidArgument(format!("matrix is not positive definite (pivot {j} is {d})")));
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    // L Y = B, then Lᵀ X = Y.
    for i in 0..n {
        for k in 0..i {
            let l = a[i * n + k];
            for c in 0..m {
                b[i * m + c] -= l * b[k * m + c];
            }
        }
        let d = a[i * n + i];
        b[i * m..i * m + m].iter_mut().for_each(|v| *v /= d);
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            let l = a[k * n + i];
            for c in 0..m {
                b[i * m + c] -= l * b[k * m + c];
            }
        }
        let d = a[i * n + i];
        b[i * m..i * m + m].iter_mut().for_each(|v| *v /= d);
    }
    Ok(())
}

/// The hidden state at every boundary 0..=L of one window (each window from an empty cache),
/// each as `[rows, hidden]` f32 values.
fn boundaries(model: &SplitModel, window: &[u32]) -> Result<Vec<Vec<f32>>> {
    let mut h = model.embed(window)?;
    let mut out = vec![h.flatten_all()?.to_vec1::<f32>()?];
    for l in 0..model.n_layers() {
        h = model.run_layers(&h, &mut KvCache::new(l..l + 1))?;
        out.push(h.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// One linear probe per boundary 0..=L, `[hidden + 1, hidden]` each, fitted on `tokens` (cut
/// into windows of `window`). `progress(done, total)` after each window.
pub fn fit_probes(
    model: &SplitModel,
    calibration: &Calibration,
    tokens: &[u32],
    window: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Tensor>> {
    let hidden = model.config().hidden_size;
    if calibration.hidden != hidden || calibration.boundaries.len() != model.n_layers() + 1 {
        return Err(Error::InvalidArgument(format!(
            "calibration {} has {} boundaries of width {}, the model {} of width {hidden}",
            calibration.model,
            calibration.boundaries.len(),
            calibration.hidden,
            model.n_layers() + 1
        )));
    }
    let mut normal: Vec<Normal> = (0..=model.n_layers()).map(|_| Normal::new(hidden + 1, hidden)).collect();
    let windows: Vec<&[u32]> = tokens.chunks(window).filter(|w| w.len() >= 2).collect();
    for (i, w) in windows.iter().enumerate() {
        let target = model.embed(w)?.squeeze(0)?;
        for (k, h) in boundaries(model, w)?.iter().enumerate() {
            normal[k].add(&features(h, hidden, 0, calibration, k, model.device())?, &target)?;
        }
        progress(i + 1, windows.len());
    }
    normal
        .into_iter()
        .map(|n| {
            let w: Vec<f32> = n.solve()?.into_iter().map(|v| v as f32).collect();
            Ok(Tensor::from_vec(w, (hidden + 1, hidden), model.device())?)
        })
        .collect()
}

/// Exact recoveries in one window, per boundary 0..=L: (nearest embedding, linear probe).
pub fn attack_window(model: &SplitModel, calibration: &Calibration, probes: &[Tensor], unit_embeddings: &Tensor, window: &[u32]) -> Result<Vec<(usize, usize)>> {
    let hidden = model.config().hidden_size;
    let rows = window.len();
    let hits = |guess: &[u32]| guess.iter().zip(window).filter(|(a, b)| a == b).count();
    let mut out = Vec::new();
    for (k, h) in boundaries(model, window)?.iter().enumerate() {
        let x = Tensor::from_slice(h, (rows, hidden), model.device())?;
        let nearest = hits(&nearest_tokens(&x, unit_embeddings)?);
        let predicted = features(h, hidden, 0, calibration, k, model.device())?.matmul(&probes[k])?;
        let probe = hits(&nearest_tokens(&predicted, unit_embeddings)?);
        out.push((nearest, probe));
    }
    Ok(out)
}

/// The Wilson 95% interval of `hits` out of `n`.
pub fn wilson(hits: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, n) = (1.959964f64, n as f64);
    let p = hits as f64 / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / (1.0 + z * z / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The shallowest k from which every deeper split's upper bound (`upper[k]`) is at most
/// `target`; `None` if even k = L is above it.
pub fn k_min(upper: &[f64], target: f64) -> Option<usize> {
    let mut k = None;
    for (i, &u) in upper.iter().enumerate().rev() {
        if u > target {
            break;
        }
        k = Some(i);
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_a_known_system() {
        // A = [[4, 2], [2, 3]], X = [[1, -1], [2, 0.5]] → B = A X.
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let mut b = vec![4.0 * 1.0 + 2.0 * 2.0, -4.0 + 2.0 * 0.5, 2.0 * 1.0 + 3.0 * 2.0, -2.0 + 3.0 * 0.5];
        cholesky_solve(&mut a, 2, &mut b, 2).unwrap();
        for (got, want) in b.iter().zip([1.0, -1.0, 2.0, 0.5]) {
            assert!((got - want).abs() < 1e-12, "{b:?}");
        }
        let mut singular = vec![1.0, 1.0, 1.0, 1.0];
        assert!(cholesky_solve(&mut singular, 2, &mut [1.0, 1.0], 1).is_err());
    }

    #[test]
    fn ridge_recovers_an_affine_map() {
        // y = 2 x0 − x1 + 3, y' = x1; enough rows that λ = 1e-3 · rows barely shrinks it.
        let mut n = Normal::new(3, 2);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..400 {
            let (x0, x1) = ((i % 7) as f32 - 3.0, (i % 11) as f32 - 5.0);
            x.extend([x0, x1, 1.0]);
            y.extend([2.0 * x0 - x1 + 3.0, x1]);
        }
        // Two windows, as the fit adds them.
        let (x, y) = (Tensor::from_vec(x, (400, 3), &Device::Cpu).unwrap(), Tensor::from_vec(y, (400, 2), &Device::Cpu).unwrap());
        n.add(&x.narrow(0, 0, 150).unwrap(), &y.narrow(0, 0, 150).unwrap()).unwrap();
        n.add(&x.narrow(0, 150, 250).unwrap(), &y.narrow(0, 150, 250).unwrap()).unwrap();
        assert_eq!(n.rows, 400);
        let w = n.solve().unwrap();
        for (got, want) in w.iter().zip([2.0, 0.0, -1.0, 1.0, 3.0, 0.0]) {
            assert!((got - want).abs() < 0.02, "{w:?}");
        }
    }

    #[test]
    fn wilson_and_k_min() {
        let (lo, hi) = wilson(50, 100);
        assert!((lo - 0.404).abs() < 1e-3 && (hi - 0.596).abs() < 1e-3, "{lo} {hi}");
        assert_eq!(wilson(0, 100).0, 0.0);
        // Above the target at 0..=2, below from 3 on, except a bump at 5: k_min is 6.
        assert_eq!(k_min(&[0.9, 0.5, 0.2, 0.05, 0.04, 0.2, 0.03, 0.02], 0.1), Some(6));
        assert_eq!(k_min(&[0.9, 0.5], 0.1), None);
        assert_eq!(k_min(&[0.01, 0.02], 0.1), Some(0));
    }
}
