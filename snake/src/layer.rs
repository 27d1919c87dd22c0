//! A decoder layer that can learn: the frozen weights of one layer in f32 (dequantized from the
//! model's quantized ones), with low-rank adapters (LoRA, Hu et al. 2021) on the query and value
//! projections as the only trainable variables.
//!
//! Every operation is built from candle's differentiable primitives (no custom kernels, which
//! have no backward pass), over a whole window at once with a causal mask: training sees every
//! position of a window in one pass and keeps no KV cache. The layer follows the same
//! architecture as the serving model (`split_core::model`): RMSNorm, grouped-query attention with
//! rotary embeddings (interleaved for llama GGUFs, half-split "neox" for qwen2), optional q/k/v
//! biases (qwen2), and a SwiGLU MLP.

use candle_core::{D, DType, Device, Result, Tensor, Var};

/// The shape of a layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerShape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    /// Rotate the two halves of a head (qwen2) rather than interleaved pairs (llama GGUFs).
    pub neox: bool,
}

impl LayerShape {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// One layer's frozen weights, `[out, in]` as in the GGUF.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Tensor,
    pub wq: Tensor,
    pub wk: Tensor,
    pub wv: Tensor,
    pub wo: Tensor,
    /// qwen2's q/k/v biases; llama has none.
    pub bq: Option<Tensor>,
    pub bk: Option<Tensor>,
    pub bv: Option<Tensor>,
    pub ffn_norm: Tensor,
    pub w_gate: Tensor,
    pub w_up: Tensor,
    pub w_down: Tensor,
}

/// A low-rank update `scale · B·A` of a frozen `[out, in]` matrix; `A` is `[rank, in]`, `B` is
/// `[out, rank]`.
#[derive(Debug, Clone)]
pub struct Lora {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
}

impl Lora {
    /// The usual start: `A` small and random, `B` zero, so the layer begins as the frozen one.
    /// `alpha / rank` is the scale (Hu et al.).
    pub fn new(rank: usize, input: usize, output: usize, alpha: f64, dtype: DType, device: &Device) -> Result<Self> {
        let a = Var::from_tensor(&(Tensor::randn(0f32, 1f32, (rank, input), device)?.to_dtype(dtype)? / (input as f64).sqrt())?)?;
        let b = Var::zeros((output, rank), dtype, device)?;
        Ok(Self { a, b, scale: alpha / rank as f64 })
    }

    /// [`Lora::new`] with `A` drawn from a seeded generator, so every method and every node
    /// starts from the same adapter.
    pub fn seeded(rank: usize, input: usize, output: usize, alpha: f64, rng: &mut impl rand::Rng, device: &Device) -> Result<Self> {
        let normal = rand_distr::Normal::new(0f32, 1.0 / (input as f32).sqrt()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let a: Vec<f32> = (0..rank * input).map(|_| rng.sample(normal)).collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (rank, input), device)?)?;
        let b = Var::zeros((output, rank), DType::F32, device)?;
        Ok(Self { a, b, scale: alpha / rank as f64 })
    }

    /// `x·Aᵀ·Bᵀ·scale` for rows `x` of `[seq, in]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.a.as_tensor().t()?)?.matmul(&self.b.as_tensor().t()?)? * self.scale
    }
}

/// A layer with adapters on its query and value projections.
#[derive(Debug, Clone)]
pub struct TrainableLayer {
    pub shape: LayerShape,
    pub weights: LayerWeights,
    pub lora_q: Lora,
    pub lora_v: Lora,
}

/// cos and sin of `position · θ^(-2i/d)` for positions `0..n`, `[n, head_dim / 2]`.
pub fn rope_tables(shape: &LayerShape, n: usize, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let d = shape.head_dim();
    let inv: Vec<f64> = (0..d / 2).map(|i| shape.rope_theta.powf(-(2.0 * i as f64) / d as f64)).collect();
    let inv = Tensor::from_vec(inv, (1, d / 2), device)?;
    let pos = Tensor::arange(0u32, n as u32, device)?.to_dtype(DType::F64)?.reshape((n, 1))?;
    let angles = pos.broadcast_mul(&inv)?;
    Ok((angles.cos()?.to_dtype(dtype)?, angles.sin()?.to_dtype(dtype)?))
}

/// Rotates `x` of `[heads, seq, head_dim]` by the tables' first `seq` rows.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, neox: bool) -> Result<Tensor> {
    let (heads, seq, d) = x.dims3()?;
    let (cos, sin) = (cos.narrow(0, 0, seq)?, sin.narrow(0, 0, seq)?);
    if neox {
        let (x1, x2) = (x.narrow(D::Minus1, 0, d / 2)?, x.narrow(D::Minus1, d / 2, d / 2)?);
        let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let r2 = (x1.broadcast_mul(&sin)? + x2.broadcast_mul(&cos)?)?;
        Tensor::cat(&[r1, r2], D::Minus1)
    } else {
        let pairs = x.reshape((heads, seq, d / 2, 2))?;
        let (even, odd) = (pairs.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?, pairs.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?);
        let r_even = (even.broadcast_mul(&cos)? - odd.broadcast_mul(&sin)?)?;
        let r_odd = (even.broadcast_mul(&sin)? + odd.broadcast_mul(&cos)?)?;
        Tensor::stack(&[r_even, r_odd], D::Minus1)?.reshape((heads, seq, d))
    }
}

/// RMSNorm from differentiable primitives (candle_nn::ops::rms_norm has no backward pass).
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
    x.broadcast_div(&rms)?.broadcast_mul(weight)
}

fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

fn silu(x: &Tensor) -> Result<Tensor> {
    x * (x.neg()?.exp()? + 1.0)?.recip()?
}

impl TrainableLayer {
    /// The trainable variables, in a fixed order.
    pub fn vars(&self) -> Vec<Var> {
        vec![self.lora_q.a.clone(), self.lora_q.b.clone(), self.lora_v.a.clone(), self.lora_v.b.clone()]
    }

    /// The layer over a whole window `x` of `[seq, hidden]` (positions `0..seq`), causally.
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let s = &self.shape;
        let w = &self.weights;
        let (seq, _) = x.dims2()?;
        let (hd, group) = (s.head_dim(), s.heads / s.kv_heads);
        let h = rms_norm(x, &w.attn_norm, s.rms_eps)?;
        let q = (linear(&h, &w.wq, w.bq.as_ref())? + self.lora_q.forward(&h)?)?;
        let k = linear(&h, &w.wk, w.bk.as_ref())?;
        let v = (linear(&h, &w.wv, w.bv.as_ref())? + self.lora_v.forward(&h)?)?;
        let q = rope(&q.reshape((seq, s.heads, hd))?.transpose(0, 1)?.contiguous()?, cos, sin, s.neox)?;
        let k = rope(&k.reshape((seq, s.kv_heads, hd))?.transpose(0, 1)?.contiguous()?, cos, sin, s.neox)?;
        let v = v.reshape((seq, s.kv_heads, hd))?.transpose(0, 1)?.contiguous()?;
        // The query heads of one key/value head attend together: [kv_heads, group·seq, hd].
        let q = q.reshape((s.kv_heads, group * seq, hd))?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        let mask: Vec<f64> = (0..group * seq).flat_map(|r| (0..seq).map(move |c| if c <= r % seq { 0.0 } else { -1e9 })).collect();
        let mask = Tensor::from_vec(mask, (group * seq, seq), x.device())?.to_dtype(x.dtype())?;
        let p = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?;
        let attn = p.matmul(&v)?.reshape((s.heads, seq, hd))?.transpose(0, 1)?.reshape((seq, s.hidden))?;
        let x = (x + linear(&attn, &w.wo, None)?)?;
        let h = rms_norm(&x, &w.ffn_norm, s.rms_eps)?;
        let mlp = linear(&(silu(&linear(&h, &w.w_gate, None)?)? * linear(&h, &w.w_up, None)?)?, &w.w_down, None)?;
        x + mlp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: LayerShape = LayerShape { hidden: 8, heads: 4, kv_heads: 2, intermediate: 12, rms_eps: 1e-6, rope_theta: 10_000.0, neox: false };

    fn random(shape: (usize, usize)) -> Tensor {
        Tensor::randn(0f64, 0.5, shape, &Device::Cpu).unwrap()
    }

    fn tiny_layer(shape: LayerShape, biases: bool) -> TrainableLayer {
        let (h, kv) = (shape.hidden, shape.kv_heads * shape.head_dim());
        let bias = |n: usize| biases.then(|| Tensor::randn(0f64, 0.1, n, &Device::Cpu).unwrap());
        let weights = LayerWeights {
            attn_norm: (Tensor::ones(h, DType::F64, &Device::Cpu).unwrap() + Tensor::randn(0f64, 0.1, h, &Device::Cpu).unwrap()).unwrap(),
            wq: random((h, h)),
            wk: random((kv, h)),
            wv: random((kv, h)),
            wo: random((h, h)),
            bq: bias(h),
            bk: bias(kv),
            bv: bias(kv),
            ffn_norm: Tensor::ones(h, DType::F64, &Device::Cpu).unwrap(),
            w_gate: random((shape.intermediate, h)),
            w_up: random((shape.intermediate, h)),
            w_down: random((h, shape.intermediate)),
        };
        let lora = |out: usize| {
            let l = Lora::new(2, h, out, 4.0, DType::F64, &Device::Cpu).unwrap();
            // Non-zero B, so the gradients of A are not trivially zero.
            l.b.set(&random((out, 2))).unwrap();
            l
        };
        TrainableLayer { shape, weights, lora_q: lora(h), lora_v: lora(kv) }
    }

    /// A scalar of the layer's output: its dot product with fixed random weights.
    fn loss(layer: &TrainableLayer, x: &Tensor, probe: &Tensor, tables: &(Tensor, Tensor)) -> Tensor {
        (layer.forward(x, &tables.0, &tables.1).unwrap() * probe).unwrap().sum_all().unwrap()
    }

    fn check_gradients(shape: LayerShape, biases: bool) {
        let layer = tiny_layer(shape, biases);
        let seq = 5;
        let x = random((seq, shape.hidden));
        let probe = random((seq, shape.hidden));
        let tables = rope_tables(&shape, seq, DType::F64, &Device::Cpu).unwrap();
        let grads = loss(&layer, &x, &probe, &tables).backward().unwrap();
        // Frozen weights get no gradient: only the adapters train.
        assert!(grads.get(&layer.weights.wq).is_none() && grads.get(&layer.weights.w_down).is_none());
        let step = 1e-5;
        for (n, var) in layer.vars().iter().enumerate() {
            let analytic = grads.get(var.as_tensor()).expect("every adapter has a gradient").flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let start = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let dims = var.as_tensor().dims().to_vec();
            for i in 0..start.len() {
                let at = |delta: f64| {
                    let mut v = start.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, dims.as_slice(), &Device::Cpu).unwrap()).unwrap();
                    loss(&layer, &x, &probe, &tables).to_scalar::<f64>().unwrap()
                };
                let numeric = (at(step) - at(-step)) / (2.0 * step);
                let tolerance = 1e-6 * (1.0 + numeric.abs());
                assert!((numeric - analytic[i]).abs() < tolerance, "var {n} element {i}: backprop {} against finite difference {numeric}", analytic[i]);
            }
            var.set(&Tensor::from_vec(start, dims.as_slice(), &Device::Cpu).unwrap()).unwrap();
        }
    }

    #[test]
    fn adapter_gradients_match_finite_differences_llama_shape() {
        check_gradients(SHAPE, false);
    }

    #[test]
    fn adapter_gradients_match_finite_differences_qwen2_shape() {
        check_gradients(LayerShape { neox: true, ..SHAPE }, true);
    }

    #[test]
    fn a_fresh_adapter_leaves_the_layer_as_it_was() {
        // B starts at zero, so whatever A is, the adapted layer computes the frozen one exactly.
        let mut layer = tiny_layer(SHAPE, false);
        let (h, kv) = (SHAPE.hidden, SHAPE.kv_heads * SHAPE.head_dim());
        let x = random((4, h));
        let tables = rope_tables(&SHAPE, 4, DType::F64, &Device::Cpu).unwrap();
        let mut outputs = Vec::new();
        for _ in 0..2 {
            layer.lora_q = Lora::new(2, h, h, 4.0, DType::F64, &Device::Cpu).unwrap();
            layer.lora_v = Lora::new(2, h, kv, 4.0, DType::F64, &Device::Cpu).unwrap();
            outputs.push(layer.forward(&x, &tables.0, &tables.1).unwrap().to_vec2::<f64>().unwrap());
        }
        assert_eq!(outputs[0], outputs[1]);
        // A trained B does change it.
        layer.lora_q.b.set(&random((h, 2))).unwrap();
        assert_ne!(layer.forward(&x, &tables.0, &tables.1).unwrap().to_vec2::<f64>().unwrap(), outputs[0]);
    }

    #[test]
    fn the_mask_is_causal() {
        // Changing the last position's input leaves every earlier output as it was.
        let layer = tiny_layer(SHAPE, true);
        let tables = rope_tables(&SHAPE, 6, DType::F64, &Device::Cpu).unwrap();
        let x = random((6, SHAPE.hidden));
        let mut changed = x.to_vec2::<f64>().unwrap();
        changed[5].iter_mut().for_each(|v| *v += 1.0);
        let y = Tensor::new(changed, &Device::Cpu).unwrap();
        let (a, b) = (layer.forward(&x, &tables.0, &tables.1).unwrap(), layer.forward(&y, &tables.0, &tables.1).unwrap());
        let early = (a.narrow(0, 0, 5).unwrap() - b.narrow(0, 0, 5).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        let last = (a.narrow(0, 5, 1).unwrap() - b.narrow(0, 5, 1).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert_eq!(early, 0.0);
        assert!(last > 0.0);
    }
}
