//! One pre-norm decoder block: RMSNorm → grouped-query attention → residual → RMSNorm →
//! SwiGLU MLP → residual. Written on candle's public building blocks.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Storage, Tensor};

use super::ModelConfig;
use super::attention::{DecodeRow, attend_rows};
use super::kv_cache::{KvCache, LayerKv};
use super::q4_1::PackedQ4_1;
use super::q5_0::PackedQ5_0;
use super::rope::RopeTable;
use crate::adapter::LowRank;
use crate::error::Result;

/// Steps with at least this many rows use the dense copy of a weight when it has one.
pub(crate) const DENSE_MIN_ROWS: usize = 4;

/// A quantized projection with an optional bias (qwen2 has them on q, k and v).
///
/// candle's CPU kernels for Q4_1/Q5_0/Q5_1 are scalar, about 5x slower than f32 GEMM on a prefill
/// here. For those types the loader also keeps `dense`, the exact f32 dequantization of the same
/// weight, and steps of [`DENSE_MIN_ROWS`] rows or more (prefill, perplexity windows) use it, as
/// llama.cpp does with BLAS for large batches. Decode steps stay on a quantized kernel, which
/// reads 8x fewer bytes: for Q4_1, our [`PackedQ4_1`] (bit for bit candle's, several times
/// faster), for other types candle's. The choice depends only on the step's shape, so both sides
/// of a split make it identically.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub weight: Weight,
    pub dense: Option<Tensor>,
    pub bias: Option<Tensor>,
    /// A low-rank update served beside the frozen weight (`--adapter`, docs/snake.md).
    pub lora: Option<LowRank>,
}

/// The quantized form of a projection's weight and the kernel that multiplies by it.
#[derive(Debug, Clone)]
pub(crate) enum Weight {
    /// Q4_1, regrouped for [`PackedQ4_1`]; candle's copy is not kept.
    PackedQ4_1(PackedQ4_1),
    /// Q5_0, regrouped for [`PackedQ5_0`]; candle's copy is not kept.
    PackedQ5_0(PackedQ5_0),
    Candle(QMatMul),
}

impl Weight {
    /// Packs a Q4_1 or Q5_0 matrix, wraps anything else for candle's kernel.
    pub fn new(q: QTensor) -> Result<Self> {
        if let Some(p) = PackedQ4_1::new(&q)? {
            return Ok(Self::PackedQ4_1(p));
        }
        Ok(match PackedQ5_0::new(&q)? {
            Some(p) => Self::PackedQ5_0(p),
            None => Self::Candle(QMatMul::from_qtensor(q)?),
        })
    }

    /// `x` (`[..., k]`) times the transposed weight, one row as a one-row product would give it.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::PackedQ4_1(p) => p.matmul(x),
            Self::PackedQ5_0(p) => p.matmul(x),
            Self::Candle(w) => Ok(w.forward(x)?),
        }
    }

    /// Each of `ws` applied to the same `x`: where they are all packed of one type, one
    /// quantization of `x` and one hand-off to the workers for all of them; otherwise each by
    /// `alone`. Every product is what that weight's own kernel gives.
    fn forward_each(ws: &[&Weight], x: &Tensor, alone: impl Fn(&Weight) -> Result<Tensor>) -> Result<Vec<Tensor>> {
        let q4_1: Option<Vec<&PackedQ4_1>> = ws.iter().map(|w| if let Weight::PackedQ4_1(p) = w { Some(p) } else { None }).collect();
        if let Some(ps) = q4_1 {
            return PackedQ4_1::matmul_each(&ps, x);
        }
        let q5_0: Option<Vec<&PackedQ5_0>> = ws.iter().map(|w| if let Weight::PackedQ5_0(p) = w { Some(p) } else { None }).collect();
        if let Some(ps) = q5_0 {
            return PackedQ5_0::matmul_each(&ps, x);
        }
        ws.iter().map(|w| alone(w)).collect()
    }
}

impl Linear {
    /// [`Linear::forward`] of each of `ls` on the same `x` (`[1, rows, inner]`); a decode row's
    /// products share one pass of the workers ([`Weight::forward_each`]).
    pub fn forward_each<const N: usize>(ls: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
        let rows = x.dim(1)?;
        let ys = if ls.iter().any(|l| l.dense.is_some()) && rows >= DENSE_MIN_ROWS {
            ls.iter().map(|l| l.forward(x)).collect::<Result<Vec<_>>>()?
        } else {
            let weights: Vec<&Weight> = ls.iter().map(|l| &l.weight).collect();
            let ys = Weight::forward_each(&weights, x, |w| w.forward(x))?;
            ls.iter().zip(ys).map(|(l, y)| l.finish(x, y)).collect::<Result<Vec<_>>>()?
        };
        exactly(ys)
    }

    /// [`Linear::forward_rows`] of each of `ls` on the same `x` (`[n, 1, inner]`).
    pub fn forward_rows_each<const N: usize>(ls: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
        let weights: Vec<&Weight> = ls.iter().map(|l| &l.weight).collect();
        let ys = Weight::forward_each(&weights, x, |w| match w {
            Weight::Candle(m) => matmul_rows(m, x),
            packed => packed.forward(x),
        })?;
        exactly(ls.iter().zip(ys).map(|(l, y)| l.finish(x, y)).collect::<Result<Vec<_>>>()?)
    }

    /// The bias and the adapter, on the frozen weight's output `y` for input `x`.
    fn finish(&self, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        Ok(match &self.lora {
            Some(l) => (y + l.forward(x)?)?,
            None => y,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, rows, inner) = x.dims3()?;
        let y = match &self.dense {
            Some(w) if rows >= DENSE_MIN_ROWS => {
                x.reshape((b * rows, inner))?.matmul(&w.t()?)?.reshape((b, rows, w.dim(0)?))?
            }
            _ => self.weight.forward(x)?,
        };
        self.finish(x, y)
    }

    /// `x` is `[n, 1, inner]`, one decode row per session; each output row is bit for bit what
    /// a one-row [`Linear::forward`] (the quantized kernel) gives that row. Q4_1 weights take
    /// [`PackedQ4_1`], which reads and unpacks each weight once for four rows; other weights
    /// take candle's kernel (see [`matmul_rows`]).
    pub fn forward_rows(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::PackedQ4_1(p) => p.matmul(x)?,
            Weight::PackedQ5_0(p) => p.matmul(x)?,
            Weight::Candle(w) => matmul_rows(w, x)?,
        };
        self.finish(x, y)
    }
}

/// `N` products as an array.
fn exactly<const N: usize>(ys: Vec<Tensor>) -> Result<[Tensor; N]> {
    let got = ys.len();
    ys.try_into().map_err(|_| candle_core::Error::Msg(format!("{got} products for {N} projections")).into())
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
/// Q6K, Q8_0) or for f32/f16 weights (gemm blocks by shape). On x86-64 with AVX2 the default
/// model no longer comes here (its Q4_1 layers and Q8_0 head have kernels of ours); the batching
/// test checked the claim on it when it did, and still checks whatever path each weight takes.
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
    /// What the cache stores keys and values in: f32 (exact), or f16 (half the memory, see
    /// [`attention`](super::attention)).
    pub kv_dtype: DType,
    /// Decode rows' attention through `gemm` as candle's batched matmul runs it (bit for bit
    /// candle-transformers' llama, serial) instead of [`attend_rows`] (see
    /// [`super::LoadOptions::reference_attention`]).
    pub reference_attention: bool,
}

impl DecoderLayer {
    /// Runs the block on `x` (`[1, seq, hidden]`) whose first row is at `cache.position()`,
    /// appending this layer's keys and values to `cache`.
    pub fn forward(&self, x: &Tensor, cfg: &ModelConfig, rope: &RopeTable, cache: &mut KvCache) -> Result<Tensor> {
        self.mlp_block(&self.attention_block(x, cfg, rope, cache)?)
    }

    /// The first half of [`DecoderLayer::forward`]: `x` plus its attention, appending this
    /// layer's keys and values to `cache`. A chunk of several rows goes through
    /// [`DecoderLayer::begin_attention`], its heads and [`DecoderLayer::end_attention`], the
    /// same code a scheduler runs a piece at a time, so both give the same bits.
    pub fn attention_block(&self, x: &Tensor, cfg: &ModelConfig, rope: &RopeTable, cache: &mut KvCache) -> Result<Tensor> {
        match self.begin_attention(x, cfg, rope, cache)? {
            Attention::Done(x) => Ok(x),
            Attention::Heads(mut chunk) => {
                while !chunk.attend_next_head()? {}
                self.end_attention(x, chunk)
            }
        }
    }

    /// The start of [`DecoderLayer::attention_block`]: the norm, the projections, rope and the
    /// cache append. One row (a decode step) is cheap and finishes here; a chunk of rows leaves
    /// its heads to [`ChunkAttention::attend_next_head`], one call per query head.
    pub fn begin_attention(&self, x: &Tensor, cfg: &ModelConfig, rope: &RopeTable, cache: &mut KvCache) -> Result<Attention> {
        let h = self.attn_norm.forward(x)?;
        let [q, k, v] = Linear::forward_each([&self.q, &self.k, &self.v], &h)?;
        let (b, seq, _) = q.dims3()?;
        if b != 1 {
            return Err(candle_core::Error::Msg(format!("attention of {b} sequences at once; the model takes one")).into());
        }
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let position = cache.position();
        let heads = |t: Tensor, n: usize| -> Result<Tensor> { Ok(t.reshape((b, seq, n, hd))?.transpose(1, 2)?) };
        let q = rope.apply(&heads(q, nh)?, position)?;
        let k = rope.apply(&heads(k, nkv)?, position)?;
        let v = heads(v, nkv)?.contiguous()?;
        let kv = cache.append(self.index, self.stored(k)?, self.stored(v)?)?;
        let scale = 1.0 / (hd as f64).sqrt();
        if seq == 1 {
            let y = self.attend_decode(&[(q, kv)], cfg)?;
            return Ok(Attention::Done((x + self.o.forward(&y)?)?));
        }
        let mask = causal_mask(seq, position, q.device())?;
        // A chunk's heads run on f32 `gemm`s: an f16 cache is widened once per chunk and layer.
        let kv = if kv.k.dtype() == DType::F32 { kv } else { LayerKv { k: kv.k.to_dtype(DType::F32)?, v: kv.v.to_dtype(DType::F32)? } };
        Ok(Attention::Heads(ChunkAttention { out: Vec::with_capacity(nh * seq * hd), q, kv, mask, scale, n_rep: nh / nkv, seq, next_head: 0 }))
    }

    /// The end of [`DecoderLayer::attention_block`] once every head of `chunk` has run: the
    /// output projection, added to `x`.
    pub fn end_attention(&self, x: &Tensor, chunk: ChunkAttention) -> Result<Tensor> {
        let y = chunk.output()?;
        Ok((x + self.o.forward(&y)?)?)
    }

    /// The second half of [`DecoderLayer::forward`]: `x` plus its MLP.
    pub fn mlp_block(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.ffn_norm.forward(x)?;
        let [gate, up] = Linear::forward_each([&self.gate, &self.up], &h)?;
        let mlp = self.down.forward(&(candle_nn::ops::silu(&gate)? * up)?)?;
        Ok((x + mlp)?)
    }

    /// One decode step of several sessions: row `i` of `x` (`[n, 1, hidden]`) is the next
    /// position of `caches[i]`. Norms, projections and the MLP run on all rows at once; rope and
    /// attention run per session, on exactly the shapes [`DecoderLayer::forward`] gives them, so
    /// every row comes out bit-identical to stepping its session alone (see [`Linear::forward_rows`]).
    pub fn forward_batch(&self, x: &Tensor, cfg: &ModelConfig, rope: &RopeTable, caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let h = self.attn_norm.forward(x)?;
        let [q, k, v] = Linear::forward_rows_each([&self.q, &self.k, &self.v], &h)?;
        let mut rows = Vec::with_capacity(caches.len());
        for (i, cache) in caches.iter_mut().enumerate() {
            let row = |t: &Tensor| t.narrow(0, i, 1);
            rows.push(self.rope_and_append(row(&q)?, row(&k)?, row(&v)?, cfg, rope, cache)?);
        }
        let attn = self.o.forward_rows(&self.attend_decode(&rows, cfg)?)?;
        let x = (x + attn)?;
        let h = self.ffn_norm.forward(&x)?;
        let [gate, up] = Linear::forward_rows_each([&self.gate, &self.up], &h)?;
        let gated = (candle_nn::ops::silu(&gate)? * up)?;
        let mlp = self.down.forward_rows(&gated)?;
        Ok((x + mlp)?)
    }

    /// Rope and cache append of one session's decode row, from its projections `q`, `k`, `v`
    /// (`[1, 1, heads · head_dim]`): the roped query heads (`[1, heads, 1, head_dim]`) and the
    /// session's keys and values with the row's own.
    fn rope_and_append(&self, q: Tensor, k: Tensor, v: Tensor, cfg: &ModelConfig, rope: &RopeTable, cache: &mut KvCache) -> Result<(Tensor, LayerKv)> {
        let (b, seq, _) = q.dims3()?;
        if (b, seq) != (1, 1) {
            return Err(candle_core::Error::Msg(format!("a batched decode row of shape {:?}", q.dims())).into());
        }
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let position = cache.position();
        let heads = |t: Tensor, n: usize| -> Result<Tensor> { Ok(t.reshape((1, 1, n, hd))?.transpose(1, 2)?) };
        let q = rope.apply(&heads(q, nh)?, position)?;
        let k = rope.apply(&heads(k, nkv)?, position)?;
        let v = heads(v, nkv)?.contiguous()?;
        Ok((q, cache.append(self.index, self.stored(k)?, self.stored(v)?)?))
    }

    /// The attention of decode rows, one per session (its roped query heads `[1, heads, 1,
    /// head_dim]` and its cache with the row's own keys and values): `[rows, 1, heads ·
    /// head_dim]`, the input of the output projection.
    fn attend_decode(&self, rows: &[(Tensor, LayerKv)], cfg: &ModelConfig) -> Result<Tensor> {
        let (nh, hd, n_rep) = (cfg.n_heads, cfg.head_dim, cfg.n_heads / cfg.n_kv_heads);
        let y = if self.reference_attention && self.kv_dtype == DType::F32 {
            let ys = rows.iter().map(|(q, kv)| attend_one(q, kv, n_rep, 1.0 / (hd as f64).sqrt())).collect::<Result<Vec<_>>>()?;
            Tensor::cat(&ys, 0)?
        } else {
            let qs = rows.iter().map(|(q, _)| Ok(q.flatten_all()?.to_vec1::<f32>()?)).collect::<Result<Vec<_>>>()?;
            let rows: Vec<DecodeRow> = qs.iter().zip(rows).map(|(q, (_, kv))| DecodeRow { q, kv }).collect();
            Tensor::from_vec(attend_rows(&rows, nh, n_rep, hd)?, (rows.len(), 1, nh * hd), &candle_core::Device::Cpu)?
        };
        Ok(y)
    }

    /// New keys or values in the cache's type.
    fn stored(&self, t: Tensor) -> Result<Tensor> {
        Ok(if t.dtype() == self.kv_dtype { t } else { t.to_dtype(self.kv_dtype)? })
    }
}

/// Where [`DecoderLayer::begin_attention`] left a layer's attention.
#[derive(Debug)]
pub(crate) enum Attention {
    /// One row: `x` plus its attention, done.
    Done(Tensor),
    /// A chunk of rows whose heads are still to run.
    Heads(ChunkAttention),
}

/// The attention of a chunk of rows after the projections, rope and cache append: its query
/// heads run one at a time, each a few milliseconds late in a long prompt, where the whole
/// layer's attention took tens (docs/survive.md).
///
/// Grouped-query attention: query head `h` reads kv head `h / n_rep` of the cache directly. The
/// products are `gemm` calls with exactly the arguments candle's batched matmul gives them on
/// K and V repeated to one per query head (as candle-transformers' llama does), so the bits are
/// that implementation's. That is deliberate: the Q4_1 kernel rounds activations to 8 bits, so a
/// one-ulp change from another product shape can flip a rounding and grow through 30 layers to
/// ~2% of the logits; the reference test asserts the equality. The scale, mask and softmax are
/// candle's ops, per element and per row, the same on one head as on all of them.
#[derive(Debug)]
pub(crate) struct ChunkAttention {
    /// `[1, heads, seq, head_dim]`, roped.
    q: Tensor,
    kv: LayerKv,
    /// `[seq, position + seq]`.
    mask: Tensor,
    scale: f64,
    n_rep: usize,
    seq: usize,
    next_head: usize,
    /// The heads done so far, each `seq · head_dim`, in head order.
    out: Vec<f32>,
}

impl ChunkAttention {
    /// Runs the next query head; `true` once every head has run.
    pub fn attend_next_head(&mut self) -> Result<bool> {
        let (_, heads, _, dim) = self.q.dims4()?;
        if self.next_head < heads {
            let h = self.next_head;
            let t = self.kv.k.dim(2)?;
            let scores = per_head_gemm(&self.q, &self.kv.k, self.n_rep, true, t, h..h + 1)?;
            let scores = (Tensor::from_vec(scores, (1, 1, self.seq, t), self.q.device())? * self.scale)?.broadcast_add(&self.mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            // `probs` is head 0 of its own tensor; it reads kv head `h / n_rep`.
            let kv_head = self.kv.v.narrow(1, h / self.n_rep, 1)?;
            self.out.extend(per_head_gemm(&probs, &kv_head, 1, false, dim, 0..1)?);
            self.next_head += 1;
        }
        Ok(self.next_head == heads)
    }

    /// `[1, seq, heads · head_dim]`, the input of the output projection.
    fn output(self) -> Result<Tensor> {
        let (_, heads, seq, dim) = self.q.dims4()?;
        if self.next_head != heads {
            return Err(candle_core::Error::Msg(format!("attention ended after {} of {heads} heads", self.next_head)).into());
        }
        let y = Tensor::from_vec(self.out, (1, heads, seq, dim), self.q.device())?;
        Ok(y.transpose(1, 2)?.reshape((1, seq, heads * dim))?)
    }
}

/// The reference decode attention ([`super::LoadOptions::reference_attention`]): one new position
/// (`q`: `[1, heads, 1, d]`) over the cache (`kv`: `[1, kv_heads, t, d]` each), returning
/// `[1, 1, heads · d]`: the same bits as the repeated-K/V path below, without
/// repeating K and V (which copied 2 · heads · t · d floats per layer per token).
///
/// candle's batched matmul calls `gemm` once per head with `m = 1`; here each head calls it with
/// exactly those arguments (sizes, strides, parallelism) on its query row and its kv head's rows
/// of the cache, so every score and output is the same. The scale and softmax are candle's ops on
/// the same `[1, heads, 1, t]` tensor.
fn attend_one(q: &Tensor, kv: &LayerKv, n_rep: usize, scale: f64) -> Result<Tensor> {
    let (_, heads, _, dim) = q.dims4()?;
    let t = kv.k.dim(2)?;
    let scores = Tensor::from_vec(per_head_gemm(q, &kv.k, n_rep, true, t, 0..heads)?, (1, heads, 1, t), q.device())?;
    let probs = candle_nn::ops::softmax_last_dim(&(scores * scale)?)?;
    let y = per_head_gemm(&probs, &kv.v, n_rep, false, dim, 0..heads)?;
    Ok(Tensor::from_vec(y, (1, 1, heads * dim), q.device())?)
}

/// For each head `h` in `heads` of `lhs` (`[1, heads, rows, inner]`), its rows times kv head
/// `h / n_rep` of `kv` (`[1, kv_heads, t, d]`), transposed (`lhs · kvᵀ`, `n` = t) or not (`lhs ·
/// kv`, `n` = d): the `rows · n` outputs of every head, one after another, each head's row-major.
/// Each head is one `gemm` call with the arguments candle's batched matmul passes for that batch
/// entry (see [`ChunkAttention`]).
#[allow(unsafe_code)]
fn per_head_gemm(lhs: &Tensor, kv: &Tensor, n_rep: usize, transposed: bool, n: usize, heads: std::ops::Range<usize>) -> Result<Vec<f32>> {
    let (_, lhs_heads, rows, inner) = lhs.dims4()?;
    let (_, kv_heads, t, d) = kv.dims4()?;
    let expected_inner = if transposed { d } else { t };
    if inner != expected_inner || lhs_heads != kv_heads * n_rep || n != if transposed { t } else { d } || heads.end > lhs_heads || heads.start > heads.end {
        return Err(candle_core::Error::Msg(format!("attention: heads {heads:?} of lhs {:?} against kv {:?}", lhs.dims(), kv.dims())).into());
    }
    let (lhs_storage, lhs_layout) = lhs.storage_and_layout();
    let (kv_storage, kv_layout) = kv.storage_and_layout();
    let (Storage::Cpu(lhs_cpu), Storage::Cpu(kv_cpu)) = (&*lhs_storage, &*kv_storage) else {
        return Err(candle_core::Error::Msg("attention runs on the cpu only".into()).into());
    };
    let (lhs_data, kv_data) = (lhs_cpu.as_slice::<f32>()?, kv_cpu.as_slice::<f32>()?);
    let (ls, ks) = (lhs_layout.stride(), kv_layout.stride());
    // The strides candle's matmul reads off `lhs` and off `kv` or its transpose.
    let (lhs_cs, lhs_rs) = (ls[3], ls[2]);
    let (rhs_cs, rhs_rs) = if transposed { (ks[2], ks[3]) } else { (ks[3], ks[2]) };
    // Every element any head reads must lie inside the storage.
    let last = |start: usize, s: &[usize], dims: [usize; 4]| start + s.iter().zip(dims).map(|(s, d)| s * d.saturating_sub(1)).sum::<usize>();
    if last(lhs_layout.start_offset(), ls, [1, lhs_heads, rows, inner]) >= lhs_data.len() || last(kv_layout.start_offset(), ks, [1, kv_heads, t, d]) >= kv_data.len() {
        return Err(candle_core::Error::Msg("attention: a view runs past its storage".into()).into());
    }
    // candle reads this from the environment on every matmul (a `getenv` each time, visible in
    // perf); it does not change while the process runs, so read it once.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads = *THREADS.get_or_init(candle_core::utils::get_num_threads);
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    let per_head = rows * n;
    let mut out = vec![0f32; heads.len() * per_head];
    // For one row gemm runs on the calling thread alone. Sharing the heads out over candle's
    // matmul workers kept the bits but was no faster here (the GQA heads of one kv head then
    // read its rows on two cores), so they run one after another.
    for (i, h) in heads.enumerate() {
        let lhs_at = lhs_layout.start_offset() + h * ls[1];
        let kv_at = kv_layout.start_offset() + (h / n_rep) * ks[1];
        // SAFETY: the check above keeps every element read, at these offsets and strides over
        // `rows` by `inner` and `inner` by `n`, inside the two slices, which outlive this call;
        // `out` has room for `rows · n` values after `i · rows · n`, written row-major with unit
        // column stride, and no two heads' ranges overlap. No other reference writes these
        // buffers meanwhile (the read guards are held and `out` is written only through this
        // pointer).
        unsafe {
            gemm::gemm(
                rows,
                n,
                inner,
                out.as_mut_ptr().add(i * per_head),
                1,
                n as isize,
                false,
                lhs_data.as_ptr().add(lhs_at),
                lhs_cs as isize,
                lhs_rs as isize,
                kv_data.as_ptr().add(kv_at),
                rhs_cs as isize,
                rhs_rs as isize,
                0f32,
                1f32,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
    Ok(out)
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


#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::super::attention::{DecodeRow, attend_rows};
    use super::super::kernel_tests::values;
    use super::{LayerKv, attend_one};

    /// `[1, heads, rows, dim]` of deterministic values scaled by `amp`.
    fn tensor(heads: usize, rows: usize, dim: usize, amp: f32, seed: u64) -> Tensor {
        let v: Vec<f32> = values(heads * rows * dim, seed).into_iter().map(|x| x * amp).collect();
        Tensor::from_vec(v, (1, heads, rows, dim), &Device::Cpu).unwrap()
    }

    /// A cache of `t` positions as KvCache holds it: a view of a larger buffer.
    fn cache(kv_heads: usize, t: usize, dim: usize, seed: u64, dtype: DType) -> LayerKv {
        let capacity = t.next_multiple_of(64) + 64;
        let view = |x: Tensor| x.to_dtype(dtype).unwrap().narrow(2, 0, t).unwrap();
        LayerKv { k: view(tensor(kv_heads, capacity, dim, 0.05, seed + 10)), v: view(tensor(kv_heads, capacity, dim, 0.05, seed + 20)) }
    }

    fn ours(q: &Tensor, kv: &LayerKv, n_rep: usize) -> Vec<f32> {
        let (_, heads, _, dim) = q.dims4().unwrap();
        let q = q.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        attend_rows(&[DecodeRow { q: &q, kv }], heads, n_rep, dim).unwrap()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    // SmolLM2's shape (9 query heads on 3 kv heads of 64) and qwen2's (14 on 2); one position, a
    // short context (run on the calling thread) and long ones (shared over the workers).
    const SHAPES: [(usize, usize, usize, usize, u64); 4] = [(9, 3, 64, 1, 1), (9, 3, 64, 13, 4), (9, 3, 64, 77, 2), (14, 2, 64, 300, 3)];

    #[test]
    fn decode_attention_stays_within_float_rounding_of_candles_gemm_path() {
        for (heads, kv_heads, dim, t, seed) in SHAPES {
            let q = tensor(heads, 1, dim, 0.05, seed);
            let kv = cache(kv_heads, t, dim, seed, DType::F32);
            let got = ours(&q, &kv, heads / kv_heads);
            let want = attend_one(&q, &kv, heads / kv_heads, 1.0 / (dim as f64).sqrt()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got.len(), heads * dim);
            let (worst, at) = got.iter().zip(&want).enumerate().map(|(i, (a, b))| ((a - b).abs(), i)).fold((0f32, 0), |m, x| if x.0 > m.0 { x } else { m });
            let size = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            // Only the order of the f32 sums differs: a few ulps of the largest output.
            assert!(size > 0.0 && worst <= size * 1e-5, "{heads}/{kv_heads} heads, t={t}: output {at} differs by {worst} (largest output {size})");
        }
    }

    #[test]
    fn attention_over_an_f16_cache_equals_the_f32_cache_on_the_same_rounded_values() {
        for (heads, kv_heads, dim, t, seed) in SHAPES {
            let q = tensor(heads, 1, dim, 0.05, seed);
            let f16 = cache(kv_heads, t, dim, seed, DType::F16);
            let widened = LayerKv { k: f16.k.to_dtype(DType::F32).unwrap(), v: f16.v.to_dtype(DType::F32).unwrap() };
            assert_eq!(bits(&ours(&q, &f16, heads / kv_heads)), bits(&ours(&q, &widened, heads / kv_heads)), "{heads}/{kv_heads} heads, t={t}");
        }
    }

    #[test]
    fn a_sessions_attention_has_the_same_bits_alone_and_among_others() {
        // Alone, the short sessions run on the calling thread; together they are shared out.
        let (heads, kv_heads, dim) = (9, 3, 64);
        let lengths = [1usize, 5, 300, 64, 2];
        let qs: Vec<Vec<f32>> = (0..lengths.len()).map(|i| tensor(heads, 1, dim, 0.05, 40 + i as u64).flatten_all().unwrap().to_vec1().unwrap()).collect();
        let kvs: Vec<LayerKv> = lengths.iter().enumerate().map(|(i, &t)| cache(kv_heads, t, dim, 50 + i as u64, DType::F32)).collect();
        let rows: Vec<DecodeRow> = qs.iter().zip(&kvs).map(|(q, kv)| DecodeRow { q, kv }).collect();
        let together = attend_rows(&rows, heads, heads / kv_heads, dim).unwrap();
        for (i, row) in rows.iter().enumerate() {
            let alone = attend_rows(std::slice::from_ref(row), heads, heads / kv_heads, dim).unwrap();
            assert_eq!(bits(&alone), bits(&together[i * heads * dim..][..heads * dim]), "session {i} ({} positions)", lengths[i]);
        }
    }

    #[test]
    fn a_cache_of_the_wrong_shape_is_refused() {
        let q = tensor(9, 1, 64, 0.05, 1).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for dtype in [DType::F32, DType::F16] {
            let kv = cache(2, 5, 64, 2, dtype);
            let e = attend_rows(&[DecodeRow { q: &q, kv: &kv }], 9, 3, 64).unwrap_err().to_string();
            assert!(e.contains("against a cache"), "{e}");
        }
    }
}
