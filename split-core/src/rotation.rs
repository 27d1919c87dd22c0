//! A linear analog code across dimensions for the last boundary (`Normalization::Rotate`,
//! docs/link.md): the transmitter rotates the standardized state into the eigenbasis of the
//! head's Fisher-weighted correlation and allocates power along it; the receiver undoes both.
//!
//! In standardized coordinates `z`, an error `e` costs `eᵀ·F_z·e` to second order in the NLL,
//! with `F_z = diag(σ)·F·diag(σ)` and `F` the Fisher information of the next token with respect
//! to the last layer's output ([`fisher`]). With `C` the correlation of `z` ([`correlation`]),
//! `C^½·F_z·C^½ = V·Λ·Vᵀ`, a transmit power of `n` per row and zero-forcing, the best linear code
//! is `T = diag(g)·Vᵀ·C^-½` with `g_i² ∝ √λ_i` ([`design`]). It costs `(Σ√λ)²`, where the best
//! per-dimension allocation costs `(Σ√F_z,dd)²` ([`Bounds`]).

use rand::{Rng, SeedableRng};

use crate::calibration::{BoundaryStats, Rotation};
use crate::error::Result;
use crate::model::{KvCache, SplitModel};

/// Eigenvalues below this share of the largest are floored to it (the correlation's and the
/// code's), so a direction the calibration barely saw is not amplified without bound.
const EIGEN_FLOOR: f64 = 1e-6;
/// The smallest power (`g_i²`, mean 1) a direction of the code gets.
const GAIN_FLOOR: f64 = 1e-2;

/// Eigenvalues and eigenvectors (columns of the returned row-major matrix) of a symmetric
/// `n × n` matrix, by cyclic Jacobi rotations.
fn jacobi(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..60 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * n + j].powi(2)).sum();
        let diag: f64 = (0..n).map(|i| a[i * n + i].powi(2)).sum();
        if off <= 1e-22 * diag {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// `V·diag(f(λ))·Vᵀ`.
fn spectral(vals: &[f64], vecs: &[f64], n: usize, f: impl Fn(f64) -> f64) -> Vec<f64> {
    let fl: Vec<f64> = vals.iter().map(|&l| f(l.max(0.0))).collect();
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n).map(|k| vecs[i * n + k] * fl[k] * vecs[j * n + k]).sum();
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                out[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    out
}

/// The covariance of the standardized last-layer output (`stats` of boundary L), `n × n`
/// row-major, over positions ≥ 1 of 512-token windows of `ids`.
pub fn correlation(model: &SplitModel, ids: &[u32], stats: &BoundaryStats) -> Result<Vec<f64>> {
    let (l, n) = (model.n_layers(), model.config().hidden_size);
    let mut sum = vec![0.0f64; n];
    let mut cross = vec![0.0f64; n * n];
    let mut rows = 0usize;
    for w in ids.chunks(512) {
        let mut cache = KvCache::new(0..l);
        let h = model.run_layers(&model.embed(w)?, &mut cache)?.squeeze(0)?.to_vec2::<f32>()?;
        for r in h.iter().skip(1) {
            let z: Vec<f64> = (0..n).map(|d| (f64::from(r[d]) - f64::from(stats.mean[d])) / f64::from(stats.std[d].max(1e-6))).collect();
            for i in 0..n {
                sum[i] += z[i];
                for j in 0..n {
                    cross[i * n + j] += z[i] * z[j];
                }
            }
            rows += 1;
        }
    }
    let rows = rows.max(1) as f64;
    Ok((0..n * n).map(|ij| cross[ij] / rows - sum[ij / n] / rows * sum[ij % n] / rows).collect())
}

/// The Fisher information of the next token with respect to the last layer's output, `n × n`
/// row-major: `E[g·gᵀ]`, `g = diag(γ)·Wᵀ·(e_y − p)/rms`, four draws of `y` from `p` per position
/// ≥ 1 of 512-token windows of `ids` (the final norm's projection left out).
pub fn fisher(model: &SplitModel, ids: &[u32]) -> Result<Vec<f64>> {
    let (l, n) = (model.n_layers(), model.config().hidden_size);
    let columns = model.head_columns()?; // [n, vocab]
    let gamma = model.final_norm_weight()?;
    let eps = model.config().rms_eps;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut f = vec![0.0f64; n * n];
    let mut count = 0usize;
    for w in ids.chunks(512) {
        let mut cache = KvCache::new(0..l);
        let h = model.run_layers(&model.embed(w)?, &mut cache)?;
        let p = candle_nn::ops::softmax_last_dim(&model.head(&h)?)?; // [seq, vocab]
        let wp = p.matmul(&columns.t()?)?.to_vec2::<f32>()?; // [seq, n]: Wᵀp per position
        let p = p.to_vec2::<f32>()?;
        let cols = columns.t()?.contiguous()?; // [vocab, n]
        let h = h.squeeze(0)?.to_vec2::<f32>()?;
        for (t, row) in h.iter().enumerate().skip(1) {
            let rms = (row.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / n as f64 + eps).sqrt();
            for _ in 0..4 {
                let u: f32 = rng.random();
                let mut acc = 0.0f32;
                let y = p[t].iter().position(|&q| {
                    acc += q;
                    acc >= u
                });
                let y = y.unwrap_or(p[t].len() - 1);
                let wy = cols.get(y)?.to_vec1::<f32>()?;
                let g: Vec<f64> = (0..n).map(|d| f64::from(gamma[d]) * f64::from(wy[d] - wp[t][d]) / rms).collect();
                for i in 0..n {
                    for j in 0..n {
                        f[i * n + j] += g[i] * g[j];
                    }
                }
                count += 1;
            }
        }
    }
    Ok(f.into_iter().map(|v| v / count as f64).collect())
}

fn floored(vals: &[f64]) -> Vec<f64> {
    let top = vals.iter().copied().fold(0.0, f64::max);
    vals.iter().map(|&v| v.max(EIGEN_FLOOR * top)).collect()
}

/// The best linear code for correlation `cov`, Fisher information `fisher` and deviations `std`
/// (all of one boundary), as a [`Rotation`].
pub fn design(cov: &[f64], fisher: &[f64], std: &[f32], n: usize) -> Rotation {
    let fz: Vec<f64> = (0..n * n).map(|ij| fisher[ij] * f64::from(std[ij / n]) * f64::from(std[ij % n])).collect();
    let (cv, cvec) = jacobi(cov.to_vec(), n);
    let cv = floored(&cv);
    let c_half = spectral(&cv, &cvec, n, f64::sqrt);
    let c_inv_half = spectral(&cv, &cvec, n, |x| 1.0 / x.sqrt());
    let (kv, kvec) = jacobi(matmul(&matmul(&c_half, &fz, n), &c_half, n), n);
    let roots: Vec<f64> = floored(&kv).iter().map(|l| l.sqrt()).collect();
    let total: f64 = roots.iter().sum();
    let mut g2: Vec<f64> = roots.iter().map(|r| (n as f64 * r / total).max(GAIN_FLOOR)).collect();
    let scale = n as f64 / g2.iter().sum::<f64>();
    g2.iter_mut().for_each(|g| *g *= scale);
    let g: Vec<f64> = g2.iter().map(|g| g.sqrt()).collect();
    // T = diag(g)·Vᵀ·C^-½ and T⁻¹ = C^½·V·diag(1/g).
    let mut vt_scaled = vec![0.0; n * n];
    let mut v_scaled = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            vt_scaled[i * n + j] = g[i] * kvec[j * n + i];
            v_scaled[i * n + j] = kvec[i * n + j] / g[j];
        }
    }
    let forward = matmul(&vt_scaled, &c_inv_half, n);
    let inverse = matmul(&c_half, &v_scaled, n);
    Rotation { n, forward: forward.iter().map(|&v| v as f32).collect(), inverse: inverse.iter().map(|&v| v as f32).collect() }
}

/// What the codes cost in one metric (per unit of noise over power; lower is better).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Plain standardization.
    pub plain: f64,
    /// The transmit gains `gain` (mean square 1), if given.
    pub gains: Option<f64>,
    /// The best per-dimension allocation.
    pub allocation: f64,
    /// The best linear code.
    pub rotation: f64,
}

/// [`Bounds`] for `metric` (x-domain, `n × n`), `cov` and `std` of one boundary.
pub fn bounds(metric: &[f64], cov: &[f64], std: &[f32], gain: &[f32], n: usize) -> Bounds {
    let mz: Vec<f64> = (0..n * n).map(|ij| metric[ij] * f64::from(std[ij / n]) * f64::from(std[ij % n])).collect();
    let (cv, cvec) = jacobi(cov.to_vec(), n);
    let c_half = spectral(&floored(&cv), &cvec, n, f64::sqrt);
    let (kv, _) = jacobi(matmul(&matmul(&c_half, &mz, n), &c_half, n), n);
    let diag = |d: usize| mz[d * n + d].max(0.0) * cov[d * n + d];
    Bounds {
        plain: n as f64 * (0..n).map(diag).sum::<f64>(),
        gains: (gain.len() == n).then(|| n as f64 * (0..n).map(|d| diag(d) / f64::from(gain[d]).powi(2)).sum::<f64>()),
        allocation: (0..n).map(|d| diag(d).sqrt()).sum::<f64>().powi(2),
        rotation: kv.iter().map(|&x| x.max(0.0).sqrt()).sum::<f64>().powi(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_diagonalizes_and_the_code_inverts_and_keeps_the_power() {
        let n = 6;
        // A correlated covariance and a metric that weights two directions heavily.
        let b: Vec<f64> = (0..n * n).map(|i| ((i * 37 % 11) as f64 - 5.0) / 5.0 + if i % (n + 1) == 0 { 2.0 } else { 0.0 }).collect();
        let cov = matmul(&b, &(0..n * n).map(|ij| b[(ij % n) * n + ij / n]).collect::<Vec<_>>(), n);
        let (vals, vecs) = jacobi(cov.clone(), n);
        let back = spectral(&vals, &vecs, n, |x| x);
        assert!(back.iter().zip(&cov).all(|(a, b)| (a - b).abs() < 1e-9), "V·Λ·Vᵀ is the matrix");
        let metric: Vec<f64> = (0..n * n).map(|ij| if ij == 0 { 50.0 } else if ij == 2 * n + 2 { 9.0 } else if ij % (n + 1) == 0 { 0.1 } else { 0.0 }).collect();
        let std = vec![1.0f32; n];
        let r = design(&cov, &metric, &std, n);
        let ti: Vec<f64> = matmul(&r.inverse.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), &r.forward.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), n);
        for i in 0..n {
            for j in 0..n {
                assert!((ti[i * n + j] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-4, "T⁻¹·T = I at {i},{j}: {}", ti[i * n + j]);
            }
        }
        // The mean power of T·z is n for z of covariance `cov`: tr(T·C·Tᵀ) = n.
        let t: Vec<f64> = r.forward.iter().map(|&v| f64::from(v)).collect();
        let tt: Vec<f64> = (0..n * n).map(|ij| t[(ij % n) * n + ij / n]).collect();
        let p = matmul(&matmul(&t, &cov, n), &tt, n);
        let power: f64 = (0..n).map(|i| p[i * n + i]).sum();
        assert!((power - n as f64).abs() < 1e-3 * n as f64, "power {power}");
        let b = bounds(&metric, &cov, &std, &[], n);
        assert!(b.rotation <= b.allocation * (1.0 + 1e-9) && b.allocation <= b.plain * (1.0 + 1e-9), "{b:?}");
        assert!(b.rotation < 0.9 * b.allocation, "a correlated source gains from the rotation: {b:?}");
    }
}
