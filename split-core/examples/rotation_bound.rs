//! How much a linear analog code that mixes dimensions could lower the head-weighted noise at
//! `k = L`, against the per-dimension power allocation of `Normalization::Allocate` (issue 15:
//! the AWGN 20 dB miss). Not a test: it prints the bound.
//!
//! In standardized coordinates `z` (calibration mean and deviation) an error `e` costs `eᵀ·M_z·e`
//! to second order in the NLL, for two metrics `M`:
//! - `head`: the logits' squared change, `diag(γ)·WᵀW·diag(γ)` ([`SplitModel::head_metric`]),
//!   the metric the transmit gains of `Normalization::Allocate` are built on;
//! - `fisher`: the Fisher information of the next-token distribution with respect to the last
//!   layer's output, `E[g·gᵀ]` with `g = diag(γ)·Wᵀ·(e_y − p)/rms`, `y` drawn from `p` (four draws
//!   per position), the final norm's projection left out.
//!
//! With `M_z = diag(σ)·M·diag(σ)`, a transmit power budget and zero-forcing at the receiver:
//! - the per-dimension allocation costs `(Σ_d √M_z,dd)²` (per unit of noise over power);
//! - the best linear code costs `(Σ_i √λ_i)²`, with `λ` the eigenvalues of `C^½·M_z·C^½` and `C`
//!   the correlation of `z` on calibration text.
//!
//! ```sh
//! cargo run --release -p split-core --example rotation_bound -- [--tokens 4096]
//! ```

use anyhow::{Context, Result};
use split_core::calibration::Calibration;
use split_core::model::{KvCache, SplitModel};
use split_core::tokenizer::Tokenizer;

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

fn main() -> Result<()> {
    let mut tokens_wanted = 4096usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--tokens" => tokens_wanted = it.next().context("--tokens needs a value")?.parse()?,
            other => anyhow::bail!("unknown flag {other}; flags: --tokens N"),
        }
    }
    let path = split_core::assets::ensure_model(&split_core::assets::SMOLLM2_135M, &mut |m| eprintln!("fetch: {m}"))?;
    let model = SplitModel::load(&path)?;
    let tok = Tokenizer::from_gguf_file(&path)?;
    let sha = split_core::assets::sha256_file(&path)?;
    let cal = Calibration::load(std::path::Path::new("calibration/smollm2-135m.json"), Some(&sha))?;
    let (l, n) = (model.n_layers(), model.config().hidden_size);
    let stats = cal.boundaries.iter().find(|b| b.k == l).context("no statistics at k = L")?;
    let (text, label) = split_core::assets::calibration_text(&mut |m| eprintln!("{m}"))?;
    let mut ids = tok.encode(&text)?;
    ids.truncate(tokens_wanted);
    // Correlation of the standardized last-layer output over positions ≥ 1 of 512-token windows.
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
    let mean: Vec<f64> = sum.iter().map(|s| s / rows as f64).collect();
    let cov: Vec<f64> = (0..n * n).map(|ij| cross[ij] / rows as f64 - mean[ij / n] * mean[ij % n]).collect();
    println!("{rows} rows of {label} at k = {l}, hidden {n}");
    eprintln!("eigen-decomposing the {n}×{n} correlation (Jacobi)...");
    let (cv, cvec) = jacobi(cov.clone(), n);
    let c_half = spectral(&cv, &cvec, n, f64::sqrt);
    let head: Vec<f64> = model.head_metric()?.iter().map(|&v| f64::from(v)).collect();
    let fisher = fisher(&model, &ids, l, n)?;
    for (name, metric) in [("head", head), ("fisher", fisher)] {
        bound(name, &metric, &cov, &c_half, &stats.std, &stats.gain, n);
    }
    Ok(())
}

/// The Fisher information of the next token with respect to the last layer's output, sampled.
fn fisher(model: &SplitModel, ids: &[u32], l: usize, n: usize) -> Result<Vec<f64>> {
    use rand::{Rng, SeedableRng};
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

fn bound(name: &str, metric: &[f64], cov: &[f64], c_half: &[f64], std: &[f32], gain: &[f32], n: usize) {
    let mz: Vec<f64> = (0..n * n).map(|ij| metric[ij] * f64::from(std[ij / n]) * f64::from(std[ij % n])).collect();
    let diag_cost: f64 = (0..n).map(|d| mz[d * n + d].max(0.0).sqrt()).sum::<f64>().powi(2);
    // Per-dimension allocation with the measured per-dimension variances (C_dd, ≈ 1).
    let diag_measured: f64 = (0..n).map(|d| (mz[d * n + d].max(0.0) * cov[d * n + d]).sqrt()).sum::<f64>().powi(2);
    let plain: f64 = n as f64 * (0..n).map(|d| mz[d * n + d] * cov[d * n + d]).sum::<f64>();
    let k = matmul(&matmul(c_half, &mz, n), c_half, n);
    let (kv, _) = jacobi(k, n);
    let rot_cost: f64 = kv.iter().map(|&x| x.max(0.0).sqrt()).sum::<f64>().powi(2);
    let db = |x: f64| 10.0 * x.log10();
    println!("metric {name}:");
    println!("plain standardization:        cost {plain:.4e}");
    if gain.len() == n {
        let shipped: f64 = n as f64 * (0..n).map(|d| mz[d * n + d] * cov[d * n + d] / f64::from(gain[d]).powi(2)).sum::<f64>();
        println!("the shipped gains (allocate): cost {shipped:.4e}  ({:.2} dB better than plain)", 10.0 * (plain / shipped).log10());
    }
    println!("per-dimension allocation:     cost {diag_measured:.4e}  ({:.2} dB better than plain; {:.2} dB with unit variances)", db(plain / diag_measured), db(plain / diag_cost));
    println!("best linear code (rotation):  cost {rot_cost:.4e}  ({:.2} dB better than plain, {:.2} dB better than the allocation)", db(plain / rot_cost), db(diag_measured / rot_cost));
}
