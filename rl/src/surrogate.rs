//! The reward surrogate: a small network predicting the quality of a split from `(k, channel
//! state)`, trained on the profile, so a policy can be trained without the real model.
//!
//! It predicts `ln(PPL / PPL_clean)` (smooth, and any quality term follows from it) from
//! normalised features: `k / L` and the state (`snr_db`, `m` for fading; `p` for erasure). The
//! authors' network was 2 → 128 → 128 → 1 on `(p, k)`; ours is the same with ReLU, one input more
//! for fading. Saved as safetensors with its normalisation and provenance in the metadata.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::algo::seed_init;
use crate::nets::{Activation, Mlp};
use crate::profile::Sample;
use crate::real::ChannelState;

const META_KEY: &str = "splitinfer-surrogate";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SurrogateMeta {
    pub model: String,
    pub n_layers: usize,
    /// "fading" (features k, snr_db, m) or "erasure" (k, p).
    pub mode: String,
    pub hidden: Vec<usize>,
    pub clean_ppl: f64,
    pub x_mean: Vec<f32>,
    pub x_std: Vec<f32>,
    /// The range of each feature in the training samples: inputs are clamped to it, so a state
    /// beyond the profile is predicted as the nearest profiled one, not extrapolated.
    pub x_min: Vec<f32>,
    pub x_max: Vec<f32>,
    pub y_mean: f32,
    pub y_std: f32,
}

pub struct Surrogate {
    pub meta: SurrogateMeta,
    net: Mlp,
    varmap: VarMap,
}

impl std::fmt::Debug for Surrogate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Surrogate").field("meta", &self.meta).field("sizes", &self.net.sizes()).finish()
    }
}

/// Training settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FitConfig {
    pub seed: u64,
    pub hidden: Vec<usize>,
    pub steps: usize,
    pub lr: f64,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self { seed: 0, hidden: vec![128, 128], steps: 3000, lr: 3e-3 }
    }
}

fn features(k: usize, n_layers: usize, state: &ChannelState) -> Vec<f32> {
    let k = k as f32 / n_layers as f32;
    match *state {
        ChannelState::Fading { snr_db, m } => vec![k, snr_db as f32, m as f32],
        ChannelState::Erasure { p } => vec![k, p as f32],
    }
}

fn mean_std(rows: &[Vec<f32>], j: usize) -> (f32, f32) {
    let n = rows.len() as f32;
    let mean = rows.iter().map(|r| r[j]).sum::<f32>() / n;
    let var = rows.iter().map(|r| (r[j] - mean).powi(2)).sum::<f32>() / n;
    (mean, var.sqrt().max(1e-6))
}

/// How well a fitted surrogate predicts samples it was not trained on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FitReport {
    pub train_samples: usize,
    pub heldout_samples: usize,
    /// Root mean square error of `ln(PPL/PPL_clean)`.
    pub train_rmse: f64,
    pub heldout_rmse: f64,
    /// The part of any error no fit can remove: the RMSE of each held-out sample around the mean
    /// of its grid point (channel seeds disagree).
    pub heldout_noise_rmse: f64,
    /// Median relative error of the perplexity, |PPL_pred − PPL| / PPL.
    pub heldout_median_rel_err: f64,
    pub seconds: f64,
}

impl Surrogate {
    /// Fits on `train` and reports the error on `heldout` (which may be empty).
    pub fn fit(model: &str, n_layers: usize, clean_ppl: f64, train: &[Sample], heldout: &[Sample], cfg: &FitConfig) -> Result<(Self, FitReport)> {
        ensure!(!train.is_empty(), "no profile samples to fit the surrogate on");
        let mode = train[0].state.mode();
        ensure!(train.iter().chain(heldout).all(|s| s.state.mode() == mode), "the surrogate is fitted on one channel mode at a time");
        let started = std::time::Instant::now();
        let xs: Vec<Vec<f32>> = train.iter().map(|s| features(s.k, n_layers, &s.state)).collect();
        let ys: Vec<f32> = train.iter().map(|s| (s.ppl / clean_ppl).ln() as f32).collect();
        let d = xs[0].len();
        let (x_mean, x_std): (Vec<f32>, Vec<f32>) = (0..d).map(|j| mean_std(&xs, j)).unzip();
        let x_min: Vec<f32> = (0..d).map(|j| xs.iter().map(|r| r[j]).fold(f32::INFINITY, f32::min)).collect();
        let x_max: Vec<f32> = (0..d).map(|j| xs.iter().map(|r| r[j]).fold(f32::NEG_INFINITY, f32::max)).collect();
        let y_mean = ys.iter().sum::<f32>() / ys.len() as f32;
        let y_std = (ys.iter().map(|y| (y - y_mean).powi(2)).sum::<f32>() / ys.len() as f32).sqrt().max(1e-6);
        let meta = SurrogateMeta { model: model.into(), n_layers, mode: mode.into(), hidden: cfg.hidden.clone(), clean_ppl, x_mean, x_std, x_min, x_max, y_mean, y_std };
        let varmap = VarMap::new();
        let net = build(&meta, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
        seed_init(&varmap, &mut StdRng::seed_from_u64(cfg.seed))?;
        let s = Self { meta, net, varmap };
        let x = s.input(&xs)?;
        let y = Tensor::from_vec(ys.iter().map(|y| (y - s.meta.y_mean) / s.meta.y_std).collect::<Vec<f32>>(), (ys.len(), 1), &Device::Cpu)?;
        let mut opt = AdamW::new(s.varmap.all_vars(), ParamsAdamW { lr: cfg.lr, weight_decay: 1e-4, ..Default::default() })?;
        // Full batch while it is small; shuffled minibatches of 512 beyond.
        let n = ys.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        for step in 0..cfg.steps {
            // Cosine decay to a tenth of the rate.
            let frac = step as f64 / cfg.steps.max(1) as f64;
            opt.set_learning_rate(cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())));
            let (bx, by) = if n <= 512 {
                (x.clone(), y.clone())
            } else {
                order.shuffle(&mut rng);
                let idx = Tensor::new(&order[..512], &Device::Cpu)?;
                (x.index_select(&idx, 0)?, y.index_select(&idx, 0)?)
            };
            let loss = (s.net.forward(&bx)? - by)?.sqr()?.mean_all()?;
            opt.backward_step(&loss)?;
        }
        let rmse = |set: &[Sample]| -> Result<f64> {
            if set.is_empty() {
                return Ok(f64::NAN);
            }
            let pred = s.predict_log_ratio(&set.iter().map(|x| (x.k, x.state)).collect::<Vec<_>>())?;
            Ok((set.iter().zip(&pred).map(|(x, p)| ((x.ppl / clean_ppl).ln() - p).powi(2)).sum::<f64>() / set.len() as f64).sqrt())
        };
        let mut rel: Vec<f64> = if heldout.is_empty() {
            Vec::new()
        } else {
            let pred = s.predict_ppl(&heldout.iter().map(|x| (x.k, x.state)).collect::<Vec<_>>())?;
            heldout.iter().zip(pred).map(|(x, p)| (p - x.ppl).abs() / x.ppl).collect()
        };
        rel.sort_by(f64::total_cmp);
        let noise = {
            let mut cells: HashMap<String, Vec<f64>> = HashMap::new();
            for x in heldout {
                cells.entry(format!("{}|{}", x.k, x.state)).or_default().push((x.ppl / clean_ppl).ln());
            }
            let (sum, n) = cells.values().fold((0.0, 0usize), |(s, n), v| {
                let m = v.iter().sum::<f64>() / v.len() as f64;
                (s + v.iter().map(|y| (y - m).powi(2)).sum::<f64>(), n + v.len())
            });
            if n == 0 { f64::NAN } else { (sum / n as f64).sqrt() }
        };
        let report = FitReport {
            heldout_noise_rmse: noise,
            train_samples: train.len(),
            heldout_samples: heldout.len(),
            train_rmse: rmse(train)?,
            heldout_rmse: rmse(heldout)?,
            heldout_median_rel_err: rel.get(rel.len() / 2).copied().unwrap_or(f64::NAN),
            seconds: started.elapsed().as_secs_f64(),
        };
        Ok((s, report))
    }

    fn input(&self, xs: &[Vec<f32>]) -> Result<Tensor> {
        let d = self.meta.x_mean.len();
        let m = &self.meta;
        let flat: Vec<f32> = xs.iter().flat_map(|r| r.iter().enumerate().map(|(j, v)| (v.clamp(m.x_min[j], m.x_max[j]) - m.x_mean[j]) / m.x_std[j])).collect();
        Ok(Tensor::from_vec(flat, (xs.len(), d), &Device::Cpu)?)
    }

    /// Predicted `ln(PPL/PPL_clean)` for each `(k, state)`.
    pub fn predict_log_ratio(&self, points: &[(usize, ChannelState)]) -> Result<Vec<f64>> {
        if points.is_empty() {
            return Ok(Vec::new());
        }
        if let Some((_, s)) = points.iter().find(|(_, s)| s.mode() != self.meta.mode) {
            bail!("this surrogate was fitted on {} states, not {s}", self.meta.mode);
        }
        let xs: Vec<Vec<f32>> = points.iter().map(|(k, s)| features(*k, self.meta.n_layers, s)).collect();
        let y = self.net.forward(&self.input(&xs)?)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(y.into_iter().map(|v| f64::from(v * self.meta.y_std + self.meta.y_mean)).collect())
    }

    pub fn predict_ppl(&self, points: &[(usize, ChannelState)]) -> Result<Vec<f64>> {
        Ok(self.predict_log_ratio(points)?.into_iter().map(|r| self.meta.clean_ppl * r.exp()).collect())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let data = self.varmap.data().lock().map_err(|_| anyhow::anyhow!("variable map poisoned"))?;
        let tensors: Vec<(String, Tensor)> = data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        let meta = HashMap::from([(META_KEY.to_string(), serde_json::to_string(&self.meta)?)]);
        let bytes = safetensors_bytes(&tensors, meta)?;
        std::fs::write(path, bytes).with_context(|| format!("cannot write surrogate {}", path.display()))?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read surrogate {}", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).with_context(|| format!("{} is not a safetensors file", path.display()))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .with_context(|| format!("{} has no {META_KEY} metadata: not a splitinfer surrogate", path.display()))?;
        let meta: SurrogateMeta = serde_json::from_str(json).with_context(|| format!("{}: bad surrogate metadata", path.display()))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let net = build(&meta, vb).with_context(|| format!("{}: weights do not match the metadata's layout", path.display()))?;
        Ok(Self { meta, net, varmap: VarMap::new() })
    }
}

fn build(meta: &SurrogateMeta, vb: VarBuilder) -> Result<Mlp> {
    let mut sizes = vec![meta.x_mean.len()];
    sizes.extend(&meta.hidden);
    sizes.push(1);
    Ok(Mlp::new(&sizes, Activation::Relu, vb)?)
}

fn safetensors_bytes(tensors: &[(String, Tensor)], meta: HashMap<String, String>) -> Result<Vec<u8>> {
    let mut owned = Vec::new();
    for (name, t) in tensors {
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        owned.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let views = owned
        .iter()
        .map(|(n, shape, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, Some(meta))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A known smooth function of (k, snr): fragile middle layers, better with SNR.
    fn truth(k: usize, snr: f64) -> f64 {
        let x = k as f64 / 30.0;
        2.5 * (-(snr + 5.0) / 12.0).exp() * (1.0 + 2.0 * (-(x - 0.5f64).powi(2) / 0.03).exp())
    }

    fn samples(snrs: &[f64]) -> Vec<Sample> {
        let mut v = Vec::new();
        for &snr in snrs {
            for k in 0..=30 {
                let state = ChannelState::Fading { snr_db: snr, m: 1.0 };
                v.push(Sample { k, state, seed: 0, ppl: 40.0 * truth(k, snr).exp(), tokens: 100, seconds: 0.0 });
            }
        }
        v
    }

    #[test]
    fn fits_a_known_function_and_predicts_unseen_states() {
        let train = samples(&[-5.0, 0.0, 5.0, 10.0, 20.0, 30.0]);
        let heldout = samples(&[2.5, 7.5]);
        let cfg = FitConfig { steps: 1500, ..Default::default() };
        let (s, r) = Surrogate::fit("test", 30, 40.0, &train, &heldout, &cfg).unwrap();
        println!("{r:?}");
        // The target spans ~0..7.5 in ln(PPL/PPL_clean); a fit within 0.15 is 4% of that.
        assert!(r.train_rmse < 0.1, "train rmse {}", r.train_rmse);
        assert!(r.heldout_rmse < 0.25, "held-out rmse {}", r.heldout_rmse);
        // Round trip through the file gives the same predictions.
        let path = std::env::temp_dir().join(format!("surrogate-{}.safetensors", std::process::id()));
        s.save(&path).unwrap();
        let back = Surrogate::load(&path).unwrap();
        let pts = [(3, ChannelState::Fading { snr_db: 4.0, m: 1.0 }), (15, ChannelState::Fading { snr_db: 0.0, m: 1.0 })];
        assert_eq!(s.predict_ppl(&pts).unwrap(), back.predict_ppl(&pts).unwrap());
        assert_eq!(back.meta, s.meta);
        // Beyond the profiled SNRs the prediction is the edge's, not an extrapolation.
        let edge = s.predict_ppl(&[(5, ChannelState::Fading { snr_db: 30.0, m: 1.0 })]).unwrap();
        assert_eq!(s.predict_ppl(&[(5, ChannelState::Fading { snr_db: 55.0, m: 1.0 })]).unwrap(), edge);
        assert!(back.predict_ppl(&[(1, ChannelState::Erasure { p: 0.1 })]).unwrap_err().to_string().contains("fitted on fading states"));
        std::fs::write(&path, b"not a surrogate").unwrap();
        assert!(Surrogate::load(&path).unwrap_err().to_string().contains("is not a safetensors file"));
    }

    #[test]
    fn the_same_seed_gives_the_same_fit() {
        let train = samples(&[0.0, 10.0]);
        let cfg = FitConfig { steps: 50, ..Default::default() };
        let a = Surrogate::fit("t", 30, 40.0, &train, &[], &cfg).unwrap().0;
        let b = Surrogate::fit("t", 30, 40.0, &train, &[], &cfg).unwrap().0;
        let pts = [(7, ChannelState::Fading { snr_db: 3.0, m: 1.0 })];
        assert_eq!(a.predict_ppl(&pts).unwrap(), b.predict_ppl(&pts).unwrap());
    }
}
