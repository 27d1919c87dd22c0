//! One pre-norm decoder block: RMSNorm → grouped-query attention → residual → RMSNorm →
//! SwiGLU MLP → residual. Written on candle's public building blocks.

use std::sync::OnceLock;

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Module, Tensor};

use super::ModelConfig;
use super::kv_cache::KvCache;
use super::q4_1::PackedQ4_1;
use super::rope::RopeTable;
use crate::error::Result;

/// Steps with at least this many rows use the dense copy of a weight when it has one.
pub(crate) const DENSE_MIN_ROWS: usize = 4;

/// A quantized projection with an optional bias (qwen2 has them on q, k and v).
///
/// candle's CPU kernels for Q4_1/Q5_0/Q5_1 are scalar, about 5x slower than f32 GEMM on a prefill
/// here. For those types the loader also keeps `dense`, the exact f32 dequantization of the same
/// weight, and steps of [`DENSE_MIN_ROWS`] rows or more (prefill, perplexity windows) use it, as
/// llama.cpp does with BLAS for large batches. Single-token decode stays on the quantized kernel,
/// which reads 8x fewer bytes. The choice depends only on the step's shape, so both sides of a
/// split make it identically.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub weight: QMatMul,
    pub dense: Option<Tensor>,
    pub bias: Option<Tensor>,
    /// The weight regrouped for batched decode steps (Q4_1 only), made on the first batch so
    /// that a side that never batches (the UE) does not hold it.
    pub packed: OnceLock<Option<PackedQ4_1>>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, rows, inner) = x.dims3()?;
        let y = match &self.dense {
            Some(w) if rows >= DENSE_MIN_ROWS => {
                x.reshape((b * rows, inner))?.matmul(&w.t()?)?.reshape((b, rows, w.dim(0)?))?
            }
            _ => self.weight.forward(x)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// `x` is `[n, 1, inner]`, one decode row per session; each output row is bit for bit what
    /// a one-row [`Linear::forward`] (the quantized kernel) gives that row. Q4_1 weights take
    /// [`PackedQ4_1`], which reads and unpacks each weight once for four rows; other weights
    /// take candle's kernel (see [`matmul_rows`]).
    pub fn forward_rows(&self, x: &Tensor) -> Result<Tensor> {
        let y = match self.packed() {
            Some(p) if x.dim(0)? > 1 => p.matmul(x)?,
            _ => matmul_rows(&self.weight, x)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    fn packed(&self) -> Option<&PackedQ4_1> {
        self.packed
            .get_or_init(|| match &self.weight {
                // A weight that cannot be packed keeps candle's kernel, which is exact too.
                QMatMul::QTensor(t) => PackedQ4_1::new(t).ok().flatten(),
                _ => None,
            })
            .as_ref()
    }
}

/// `w` applied to each row (along dim 0) of `x` as if to that row alone. One call for all rows
/// where candle's kernel makes that exact (see [`rows_are_independent`]), else one call per row.
pub(crate) fn matmul_rows(w: &QMatMul, x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    if n == 1 || rows_are_independent(w) {
        return Ok(w.forward(x)?);
    }
    let rows = (0..n).map(|i| w.forward(&x.narrow(0, i, 1)?)).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&rows, 0)?)
}

/// Whether candle's CPU kernel for `w` computes each row of a many-row product exactly as it
/// computes that row alone. It does where candle 0.11.1 takes its generic `k_quants::matmul` for
/// one row and for many: each activation row is quantized to 8-bit blocks on its own and each
/// (row, column) is one `vec_dot` of the same blocks whatever the row count, so batching only
/// changes how often the weights are read. It does not where a repacked kernel takes over for
/// some row counts (x86-64: Q4K, Q6K, Q8_0 with `k` a multiple of 256; aarch64: Q4_0, Q4K, Q5K,
/// Q6K, Q8_0) or for f32/f16 weights (gemm blocks by shape). The batching test checks the claim
/// on the default model (Q4_1 layers, Q8_0 head).
fn rows_are_independent(w: &QMatMul) -> bool {
    let QMatMul::QTensor(t) = w else { return false };
    let Ok((_, k)) = t.shape().dims2() else { return false };
    let x86 = cfg!(target_arch = "x86_64");
    match t.dtype() {
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => true,
        GgmlDType::Q4_0 | GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q5K => x86,
        GgmlDType::Q8_0 => x86 && !k.is_multiple_of(256),
        _ => false,
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    pub weight: Tensor,
    pub eps: f32,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DecoderLayer {
    pub index: usize,
    pub attn_norm: RmsNorm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub ffn_norm: RmsNorm,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl DecoderLayer {
    /// Runs the block on `x` (`[1, seq, hidden]`) whose first row is at `cache.position()`,
    /// appending this layer's keys and values to `cache`.
    pub fn forward(&self, x: &Tensor, cfg: &ModelConfig, rope: &RopeTable, cache: &mut KvCache) -> Result<Tensor> {
        let h = self.attn_norm.forward(x)?;
        let attn = self.attention(&h, cfg, rope, cache)?;
        let x = (x + attn)?;
        let h = self.ffn_norm.forward(&x)?;
        let mlp = self.down.forward(&(candle_nn::ops::silu(&self.gate.forward(&h)?)? * self.up.forward(&h)?)?)?;
        Ok((x + mlp)?)
    }

    /// One decode step of several sessions: row `i` of `x` (`[n, 1, hidden]`) is the next
    /// position of `caches[i]`. Norms, projections and the MLP run on all rows at once; rope and
    /// attention run per session, on exactly the shapes [`DecoderLayer::forward`] gives them, so
    /// every row comes out bit-identical to stepping its session alone (see [`Linear::forward_rows`]).
    pub fn forward_batch(&self, x: &Tensor, cfg: &ModelConfig, rope: &RopeTable, caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let h = self.attn_norm.forward(x)?;
        let (q, k, v) = (self.q.forward_rows(&h)?, self.k.forward_rows(&h)?, self.v.forward_rows(&h)?);
        let mut ys = Vec::with_capacity(caches.len());
        for (i, cache) in caches.iter_mut().enumerate() {
            let row = |t: &Tensor| t.narrow(0, i, 1);
            ys.push(self.attend(row(&q)?, row(&k)?, row(&v)?, cfg, rope, cache)?);
        }
        let attn = self.o.forward_rows(&Tensor::cat(&ys, 0)?)?;
        let x = (x + attn)?;
        let h = self.ffn_norm.forward(&x)?;
        let gated = (candle_nn::ops::silu(&self.gate.forward_rows(&h)?)? * self.up.forward_rows(&h)?)?;
        let mlp = self.down.forward_rows(&gated)?;
        Ok((x + mlp)?)
    }

    fn attention(&self, x: &Tensor, cfg: &ModelConfig, rope: &RopeTable, cache: &mut KvCache) -> Result<Tensor> {
        let y = self.attend(self.q.forward(x)?, self.k.forward(x)?, self.v.forward(x)?, cfg, rope, cache)?;
        self.o.forward(&y)
    }

    /// Rope, cache append and attention of one session, from its projections `q`, `k`, `v`
    /// (`[1, seq, heads · head_dim]`) to the input of the output projection.
    fn attend(&self, q: Tensor, k: Tensor, v: Tensor, cfg: &ModelConfig, rope: &RopeTable, cache: &mut KvCache) -> Result<Tensor> {
        let (b, seq, _) = q.dims3()?;
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let position = cache.position();

        let heads = |t: Tensor, n: usize| -> Result<Tensor> { Ok(t.reshape((b, seq, n, hd))?.transpose(1, 2)?) };
        let q = rope.apply(&heads(q, nh)?, position)?;
        let k = rope.apply(&heads(k, nkv)?, position)?;
        let v = heads(v, nkv)?.contiguous()?;
        let kv = cache.append(self.index, k, v)?;

        // Grouped-query attention: each kv head serves `n_rep` consecutive query heads. K/V are
        // repeated to one per query head, the same matmul shapes as candle-transformers' llama.
        // That is deliberate: the Q4_1 kernel rounds activations to 8 bits, so a one-ulp change
        // from a different matmul shape can flip a rounding and grow through 30 layers to ~2% of
        // the logits. With the same shapes our quantized path equals that independent
        // implementation bit for bit, which the reference test asserts.
        let n_rep = nh / nkv;
        let k = repeat_kv(&kv.k, n_rep)?;
        let v = repeat_kv(&kv.v, n_rep)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = if seq > 1 { scores.broadcast_add(&causal_mask(seq, position, q.device())?)? } else { scores };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = probs.matmul(&v)?;
        Ok(y.transpose(1, 2)?.reshape((b, seq, nh * hd))?)
    }
}

/// `[b, kv_heads, t, d]` → `[b, kv_heads · n_rep, t, d]`, each kv head repeated in place.
fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, nkv, t, d) = x.dims4()?;
    Ok(Tensor::cat(&vec![x; n_rep], 2)?.reshape((b, nkv * n_rep, t, d))?)
}

/// `[seq, position + seq]` additive mask: row `i` (absolute position `position + i`) may attend to
/// every cached position and to new rows `0..=i`.
fn causal_mask(seq: usize, position: usize, device: &candle_core::Device) -> Result<Tensor> {
    let total = position + seq;
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..total).map(move |j| if j > position + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (seq, total), device)?)
}

