//! One pre-norm decoder block: RMSNorm → grouped-query attention → residual → RMSNorm →
//! SwiGLU MLP → residual. Written on candle's public building blocks.

use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};

use super::ModelConfig;
use super::kv_cache::KvCache;
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

    fn attention(&self, x: &Tensor, cfg: &ModelConfig, rope: &RopeTable, cache: &mut KvCache) -> Result<Tensor> {
        let (b, seq, _) = x.dims3()?;
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let position = cache.position();

        let heads = |t: Tensor, n: usize| -> Result<Tensor> { Ok(t.reshape((b, seq, n, hd))?.transpose(1, 2)?) };
        let q = rope.apply(&heads(self.q.forward(x)?, nh)?, position)?;
        let k = rope.apply(&heads(self.k.forward(x)?, nkv)?, position)?;
        let v = heads(self.v.forward(x)?, nkv)?.contiguous()?;
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
        let scores = if seq > 1 { scores.broadcast_add(&causal_mask(seq, position, x.device())?)? } else { scores };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = probs.matmul(&v)?;
        let y = y.transpose(1, 2)?.reshape((b, seq, nh * hd))?;
        self.o.forward(&y)
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

