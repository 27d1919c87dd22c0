//! Low-rank adapters (LoRA, Hu et al. 2021) on the query and value projections of some layers:
//! what Snake Learning trains (docs/snake.md) and what `edge-server --adapter` serves.
//!
//! A projection `y = W·x` becomes `y = W·x + scale · B·(A·x)`, with `A` of `[rank, in]` and `B`
//! of `[out, rank]`. The file is safetensors: tensors `layer.{i}.{q,v}.{a,b}` in f32, and in its
//! metadata the sha256 of the model the adapter was trained on, the rank, α and the split it was
//! trained for. A model refuses an adapter made for another model.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The metadata key of the model's sha256 in an adapter file.
const KEY_MODEL: &str = "splitinfer.model_sha256";
const KEY_RANK: &str = "splitinfer.rank";
const KEY_ALPHA: &str = "splitinfer.alpha";
const KEY_SPLIT: &str = "splitinfer.trained_split";

/// `scale · B·A`, the low-rank update of one `[out, in]` projection.
#[derive(Debug, Clone)]
pub struct LowRank {
    /// `[rank, in]`.
    pub a: Tensor,
    /// `[out, rank]`.
    pub b: Tensor,
    pub scale: f64,
}

impl LowRank {
    /// `x` (`[..., in]`) times `(scale · B·A)ᵀ`, as `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.broadcast_matmul(&self.a.t()?)?;
        Ok((h.broadcast_matmul(&self.b.t()?)? * self.scale)?)
    }

    fn dims(&self) -> Result<(usize, usize, usize)> {
        let (rank, input) = self.a.dims2()?;
        let (out, rank_b) = self.b.dims2()?;
        if rank != rank_b {
            return Err(Error::InvalidArgument(format!("adapter A has rank {rank} but B has {rank_b}")));
        }
        Ok((rank, input, out))
    }
}

/// The adapters of one layer.
#[derive(Debug, Clone)]
pub struct LayerAdapter {
    pub q: LowRank,
    pub v: LowRank,
}

/// Adapters on some layers of one model.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// sha256 (hex) of the GGUF the adapter was trained on.
    pub model_sha256: String,
    pub rank: usize,
    pub alpha: f64,
    /// The split the adapter was trained for: its layers are the edge's there.
    pub trained_split: usize,
    pub layers: BTreeMap<usize, LayerAdapter>,
}

impl Adapter {
    /// The file's bytes (safetensors).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (i, l) in &self.layers {
            for (name, lr) in [("q", &l.q), ("v", &l.v)] {
                tensors.push((format!("layer.{i}.{name}.a"), lr.a.to_dtype(DType::F32)?));
                tensors.push((format!("layer.{i}.{name}.b"), lr.b.to_dtype(DType::F32)?));
            }
        }
        let metadata = HashMap::from([
            (KEY_MODEL.to_string(), self.model_sha256.clone()),
            (KEY_RANK.to_string(), self.rank.to_string()),
            (KEY_ALPHA.to_string(), self.alpha.to_string()),
            (KEY_SPLIT.to_string(), self.trained_split.to_string()),
        ]);
        safetensors::serialize(tensors, Some(metadata)).map_err(|e| Error::InvalidArgument(format!("adapter: {e}")))
    }

    /// Reads an adapter from its bytes; `what` names the source in errors.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self> {
        let bad = |reason: String| Error::InvalidArgument(format!("adapter {what}: {reason}"));
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let get = |key: &str| meta.get(key).ok_or_else(|| bad(format!("metadata {key} is missing")));
        let model_sha256 = get(KEY_MODEL)?.clone();
        let rank: usize = get(KEY_RANK)?.parse().map_err(|_| bad("rank is not a number".into()))?;
        let alpha: f64 = get(KEY_ALPHA)?.parse().map_err(|_| bad("alpha is not a number".into()))?;
        let trained_split: usize = get(KEY_SPLIT)?.parse().map_err(|_| bad("trained_split is not a number".into()))?;
        if rank == 0 || !alpha.is_finite() {
            return Err(bad(format!("rank {rank} and alpha {alpha} must be positive and finite")));
        }
        let mut tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        let mut indices: Vec<usize> = Vec::new();
        for name in tensors.keys() {
            let i = name.strip_prefix("layer.").and_then(|r| r.split('.').next()).and_then(|i| i.parse().ok());
            match i {
                Some(i) => indices.push(i),
                None => return Err(bad(format!("unexpected tensor {name:?}"))),
            }
        }
        indices.sort_unstable();
        indices.dedup();
        let scale = alpha / rank as f64;
        let mut layers = BTreeMap::new();
        for i in indices {
            let mut take = |name: String| -> Result<Tensor> {
                let t = tensors.remove(&name).ok_or_else(|| bad(format!("tensor {name} is missing")))?;
                let t = t.to_dtype(DType::F32)?;
                let finite = t.flatten_all()?.to_vec1::<f32>()?.iter().all(|x| x.is_finite());
                if !finite {
                    return Err(bad(format!("tensor {name} holds a non-finite value")));
                }
                Ok(t)
            };
            let q = LowRank { a: take(format!("layer.{i}.q.a"))?, b: take(format!("layer.{i}.q.b"))?, scale };
            let v = LowRank { a: take(format!("layer.{i}.v.a"))?, b: take(format!("layer.{i}.v.b"))?, scale };
            for lr in [&q, &v] {
                let (r, _, _) = lr.dims().map_err(|e| bad(e.to_string()))?;
                if r != rank {
                    return Err(bad(format!("layer {i} has rank {r}, the metadata says {rank}")));
                }
            }
            layers.insert(i, LayerAdapter { q, v });
        }
        if let Some(name) = tensors.keys().next() {
            return Err(bad(format!("unexpected tensor {name:?}")));
        }
        Ok(Self { model_sha256, rank, alpha, trained_split, layers })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()?).map_err(|source| Error::Io { what: "cannot write adapter", path: path.into(), source })
    }

    /// Reads an adapter file and checks that it was made for the model with `model_sha256`.
    pub fn load(path: &Path, model_sha256: &str) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io { what: "cannot read adapter", path: path.into(), source })?;
        let adapter = Self::from_bytes(&bytes, &path.display().to_string())?;
        if !adapter.model_sha256.eq_ignore_ascii_case(model_sha256) {
            return Err(Error::InvalidArgument(format!(
                "adapter {} was trained on the model with sha256 {}, not on this model ({model_sha256})",
                path.display(),
                adapter.model_sha256
            )));
        }
        Ok(adapter)
    }

    /// The shape each layer's adapters must have: `(q out, v out, in)`.
    pub(crate) fn check_layer(&self, i: usize, hidden: usize, q_out: usize, v_out: usize) -> Result<()> {
        let Some(l) = self.layers.get(&i) else { return Ok(()) };
        for (name, lr, out) in [("q", &l.q, q_out), ("v", &l.v, v_out)] {
            let (_, input, o) = lr.dims()?;
            if input != hidden || o != out {
                return Err(Error::InvalidArgument(format!(
                    "adapter layer {i} {name} is [{o}, {input}], the model's projection is [{out}, {hidden}]"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Adapter {
        let d = Device::Cpu;
        let lr = |out: usize, seed: f32| LowRank {
            a: Tensor::arange(0f32, 8.0 * 4.0, &d).unwrap().reshape((4, 8)).unwrap().affine(0.01, seed as f64).unwrap(),
            b: Tensor::arange(0f32, (out * 4) as f32, &d).unwrap().reshape((out, 4)).unwrap().affine(-0.02, 0.0).unwrap(),
            scale: 2.0,
        };
        let layers = BTreeMap::from([(3, LayerAdapter { q: lr(8, 0.1), v: lr(2, 0.2) }), (4, LayerAdapter { q: lr(8, 0.3), v: lr(2, 0.4) })]);
        Adapter { model_sha256: "ab".repeat(32), rank: 4, alpha: 8.0, trained_split: 3, layers }
    }

    #[test]
    fn round_trips_through_its_bytes() {
        let a = tiny();
        let b = Adapter::from_bytes(&a.to_bytes().unwrap(), "mem").unwrap();
        assert_eq!((b.rank, b.alpha, b.trained_split, b.model_sha256.as_str()), (4, 8.0, 3, a.model_sha256.as_str()));
        assert_eq!(b.layers.keys().copied().collect::<Vec<_>>(), [3, 4]);
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&b.layers[&4].v.b), v(&a.layers[&4].v.b));
        assert_eq!(b.layers[&3].q.scale, 2.0);
    }

    #[test]
    fn refuses_another_models_adapter_and_garbage() {
        let dir = std::env::temp_dir().join(format!("adapter-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.safetensors");
        tiny().save(&path).unwrap();
        let err = Adapter::load(&path, &"cd".repeat(32)).unwrap_err().to_string();
        assert!(err.contains("was trained on the model with sha256 abab") && err.contains("not on this model (cdcd"), "{err}");
        assert!(Adapter::load(&path, &"AB".repeat(32)).is_ok());
        let err = Adapter::from_bytes(b"not a file", "x").unwrap_err().to_string();
        assert!(err.contains("adapter x: not a safetensors file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn forward_is_scale_b_a_x() {
        let a = tiny();
        let lr = &a.layers[&3].v;
        let x: Vec<f32> = (0..16).map(|i| (i as f32 - 7.0) * 0.1).collect();
        let y = lr.forward(&Tensor::from_vec(x.clone(), (1, 2, 8), &Device::Cpu).unwrap()).unwrap();
        assert_eq!(y.dims(), &[1, 2, 2]);
        let (av, bv) = (lr.a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), lr.b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for row in 0..2 {
            for o in 0..2 {
                let want: f64 = (0..4)
                    .map(|r| f64::from(bv[o * 4 + r]) * (0..8).map(|c| f64::from(av[r * 8 + c]) * f64::from(x[row * 8 + c])).sum::<f64>())
                    .sum::<f64>()
                    * 2.0;
                assert!((f64::from(got[row * 2 + o]) - want).abs() < 1e-5, "row {row} out {o}: {} vs {want}", got[row * 2 + o]);
            }
        }
    }
}
