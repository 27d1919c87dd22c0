//! A decoder-only LLM loaded from GGUF, with the split as its API.
//!
//! `embed` → `run_layers` over any contiguous range with that range's own [`KvCache`] →
//! `head`. Running `0..k` then `k..L` executes exactly the operations of running `0..L`, so split
//! inference with an f32 boundary is bit-identical to the monolithic model; the tests check it.
//! `run_layers_batch` and `head_last_batch` take one decode step of several sessions in one pass
//! over the weights, giving each session the bits it would get alone (`q4_1` holds the kernel
//! that makes that fast).

mod attention;
mod config;
mod kv_cache;
mod layer;
mod packed;
mod q4_1;
mod q5_0;
mod q8_0;
#[cfg(test)]
mod kernel_tests;
mod rope;

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, IndexOp, Module, Tensor};

pub use config::{Architecture, ModelConfig};
pub use kv_cache::{KvCache, LayerKv};
pub use q4_1::PackedQ4_1;
pub use q5_0::PackedQ5_0;
pub use q8_0::matmul_rows as q8_0_matmul_rows;
use layer::{Attention, ChunkAttention, DecoderLayer, Linear, RmsNorm};
use rope::RopeTable;

use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::split::SplitPoint;

/// The largest LM head kept dequantized (f32) for many-row heads: SmolLM2's 113 MB fits, a
/// 150k-token vocabulary (545 MB) does not.
const DENSE_HEAD_MAX_BYTES: usize = 256 << 20;

/// How to hold the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Keep an exact f32 copy of weights whose quantized CPU kernel is scalar (Q4_1, Q5_0, Q5_1)
    /// and use it for steps of several rows (prefill): ~4x faster prefill for ~4x their memory.
    /// Off, every step uses the quantized kernel, which rounds activations to 8 bits per block
    /// the way llama.cpp's CPU path does. Also keeps a dense LM head (up to 256 MB) for heads over
    /// several rows (perplexity), which candle's Q8_0 kernel runs ~4x slower.
    pub dense_prefill: bool,
    /// Run a decode step's attention the way candle's batched matmul does (a `gemm` per head, on
    /// the calling thread), which gives bit for bit the logits of candle-transformers' llama, as
    /// the reference test checks. Off (the default), decode rows take our own attention, its
    /// heads shared over both cores (a whole decode step 1.19× faster after a 531-token prompt), whose sums run in
    /// another fixed order: the logits move by float rounding (docs/performance.md gives the
    /// measured difference). Either way a session's bits do not depend on batching, threads or
    /// the split. Prefill chunks always take the `gemm` path.
    pub reference_attention: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dense_prefill: true, reference_attention: false }
    }
}

/// A KV cache type by name, for the command-line options that choose it: `f32` or `f16`.
pub fn parse_kv_dtype(s: &str) -> std::result::Result<DType, String> {
    match s.trim() {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        other => Err(format!("{other:?} is not a KV cache type: f32 or f16")),
    }
}

/// The model's weights, shared (read-only) by every session that runs any of its layers.
#[derive(Debug)]
pub struct SplitModel {
    config: ModelConfig,
    embedding: Arc<QTensor>,
    layers: Vec<DecoderLayer>,
    final_norm: RmsNorm,
    lm_head: QMatMul,
    /// The head dequantized, for heads over many rows (perplexity); see [`LoadOptions`].
    lm_head_dense: Option<Tensor>,
    rope: RopeTable,
    device: Device,
    path: PathBuf,
}

/// A [`SplitModel::run_layers`] in progress, run a layer at a time.
#[derive(Debug)]
pub struct LayerRun {
    x: Tensor,
    next: usize,
    /// Where layer `next` is.
    stage: Stage,
    end: usize,
    rows: usize,
    done: bool,
}

/// The pieces of one layer that [`SplitModel::run_next_block`] runs one at a time.
#[derive(Debug)]
enum Stage {
    /// Next: the norm, projections, rope and cache append (and, for one row, its attention).
    Start,
    /// Next: one query head of the chunk's attention; after the last, the output projection.
    Heads(ChunkAttention),
    /// Next: the MLP block.
    Mlp,
}

impl LayerRun {
    /// The hidden state after the layers run so far (all of them once the run is done).
    pub fn output(&self) -> &Tensor {
        &self.x
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

impl SplitModel {
    /// Loads a GGUF file of a supported architecture onto the CPU, with default options.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(path, LoadOptions::default())
    }

    pub fn load_with(path: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let corrupt = |reason: String| Error::CorruptModel { path: path.clone(), reason };
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ModelNotFound {
                path: path.clone(),
                hint: "; run `splitinfer fetch-assets` for the default model or pass --model PATH".into(),
            },
            _ => Error::Io { what: "cannot open model file", path: path.clone(), source: e },
        })?;
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| corrupt(e.to_string()))?;
        check_tensor_extent(&content, file_len).map_err(corrupt)?;

        let arch_name = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| Error::MissingMetadata { key: "general.architecture".into() })?;
        let architecture = Architecture::from_gguf_name(&arch_name).ok_or_else(|| Error::UnsupportedArchitecture {
            arch: arch_name.clone(),
            path: path.clone(),
            supported: Architecture::SUPPORTED.into(),
        })?;
        let config = ModelConfig::from_gguf(architecture, &content.metadata)?;
        let device = Device::Cpu;
        let mut loader = Loader { content: &content, reader: &mut reader, device: &device, options };

        let embedding = Arc::new(loader.qtensor("token_embd.weight")?);
        let eps = config.rms_eps as f32;
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = format!("blk.{i}");
            layers.push(DecoderLayer {
                index: i,
                attn_norm: RmsNorm { weight: loader.dense(&format!("{p}.attn_norm.weight"))?, eps },
                q: loader.linear(&format!("{p}.attn_q"))?,
                k: loader.linear(&format!("{p}.attn_k"))?,
                v: loader.linear(&format!("{p}.attn_v"))?,
                o: loader.linear(&format!("{p}.attn_output"))?,
                ffn_norm: RmsNorm { weight: loader.dense(&format!("{p}.ffn_norm.weight"))?, eps },
                gate: loader.linear(&format!("{p}.ffn_gate"))?,
                up: loader.linear(&format!("{p}.ffn_up"))?,
                down: loader.linear(&format!("{p}.ffn_down"))?,
                kv_dtype: DType::F32,
                reference_attention: options.reference_attention,
            });
        }
        let final_norm = RmsNorm { weight: loader.dense("output_norm.weight")?, eps };
        // Tied embeddings (SmolLM2, Qwen2.5-0.5B) have no output.weight: the head is the table.
        let lm_head = if content.tensor_infos.contains_key("output.weight") {
            QMatMul::from_qtensor(loader.qtensor("output.weight")?)?
        } else {
            QMatMul::from_arc(embedding.clone())?
        };
        let rope = RopeTable::new(
            config.head_dim,
            config.rope_theta,
            config.context_length,
            architecture.rope_is_neox(),
            &device,
        )?;
        // Scoring many rows (perplexity windows) is a big matmul; candle's quantized kernels
        // run it ~4x slower than f32 gemm. Dense only while the table is modest in size.
        let head_q = content.tensor_infos.get("output.weight").or_else(|| content.tensor_infos.get("token_embd.weight"));
        let head_bytes = head_q.map_or(usize::MAX, |t| t.shape.elem_count() * 4);
        let lm_head_dense = if options.dense_prefill && head_bytes <= DENSE_HEAD_MAX_BYTES {
            Some(match content.tensor_infos.contains_key("output.weight") {
                true => loader.dense("output.weight")?,
                false => embedding.dequantize(&device)?,
            })
        } else {
            None
        };
        Ok(Self { config, embedding, layers, final_norm, lm_head, lm_head_dense, rope, device, path })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Adds `adapter`'s low-rank updates to the query and value projections of its layers from
    /// `from_layer` on (the edge's side of a split at `from_layer`), replacing any earlier ones.
    /// Returns how many layers took one. Refuses adapters whose shapes do not fit this model.
    pub fn apply_adapter(&mut self, adapter: &Adapter, from_layer: usize) -> Result<usize> {
        let (hidden, q_out, v_out) = (self.config.hidden_size, self.config.n_heads * self.config.head_dim, self.config.n_kv_heads * self.config.head_dim);
        if let Some(&i) = adapter.layers.keys().find(|&&i| i >= self.config.n_layers) {
            return Err(Error::InvalidArgument(format!("adapter has layer {i}; the model has {} layers", self.config.n_layers)));
        }
        for &i in adapter.layers.keys() {
            adapter.check_layer(i, hidden, q_out, v_out)?;
        }
        let mut applied = 0;
        for (&i, l) in adapter.layers.range(from_layer..) {
            self.layers[i].q.lora = Some(l.q.clone());
            self.layers[i].v.lora = Some(l.v.clone());
            applied += 1;
        }
        Ok(applied)
    }

    /// Whether decode rows take the reference attention from now on (see
    /// [`LoadOptions::reference_attention`]).
    pub fn set_reference_attention(&mut self, on: bool) {
        for layer in &mut self.layers {
            layer.reference_attention = on;
        }
    }

    /// Stores keys and values in `dtype` from now on: f32 (the default, exact) or f16 (half the
    /// cache's memory; a decode step attends over it with its own kernel, a chunk widens it to
    /// f32 first). Caches filled before keep their type.
    pub fn set_kv_dtype(&mut self, dtype: DType) -> Result<()> {
        if !matches!(dtype, DType::F32 | DType::F16) {
            return Err(Error::InvalidArgument(format!("a KV cache holds f32 or f16, not {dtype:?}")));
        }
        for layer in &mut self.layers {
            layer.kv_dtype = dtype;
        }
        Ok(())
    }

    /// What new keys and values are stored in.
    pub fn kv_dtype(&self) -> DType {
        self.layers.first().map_or(DType::F32, |l| l.kv_dtype)
    }

    pub fn n_layers(&self) -> usize {
        self.config.n_layers
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A split point checked against this model.
    pub fn split_point(&self, k: usize) -> Result<SplitPoint> {
        SplitPoint::new(k, self.config.n_layers)
    }

    /// Token ids → hidden states `[1, seq, hidden]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(Error::TokenOutOfRange { id, vocab: self.config.vocab_size });
        }
        let ids = Tensor::new(tokens, &self.device)?;
        Ok(self.embedding.embedding(&ids)?.unsqueeze(0)?)
    }

    /// Runs the layers `cache.range()` on `hidden` (`[1, seq, hidden]`), whose first row is at
    /// position `cache.position()`, and advances the cache by `seq`.
    pub fn run_layers(&self, hidden: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.run_layers_inner(hidden, cache, None)
    }

    /// [`SplitModel::run_layers`], also pushing the output of every layer onto `trace` (the
    /// hidden states at boundaries `start + 1 ..= end`), for a later recompute of moved layers.
    pub fn run_layers_traced(&self, hidden: &Tensor, cache: &mut KvCache, trace: &mut Vec<Tensor>) -> Result<Tensor> {
        self.run_layers_inner(hidden, cache, Some(trace))
    }

    /// Starts [`SplitModel::run_layers`] on `hidden` to be run a layer at a time with
    /// [`SplitModel::run_next_layer`], for a scheduler that does other work between layers (the
    /// edge interleaves a long prefill with other sessions' decode steps). Checks what
    /// `run_layers` checks, before anything runs.
    pub fn start_layers(&self, hidden: &Tensor, cache: &KvCache) -> Result<LayerRun> {
        let rows = self.check_run(hidden, cache)?;
        let range = cache.range();
        Ok(LayerRun { x: hidden.clone(), next: range.start, stage: Stage::Start, end: range.end, rows, done: false })
    }

    /// What running `cache.range()` on `hidden` needs: the range, the shape, the context room.
    /// Returns the rows.
    fn check_run(&self, hidden: &Tensor, cache: &KvCache) -> Result<usize> {
        self.check_range(&cache.range())?;
        let rows = self.check_hidden(hidden)?;
        let needed = cache.position() + rows;
        if needed > self.config.context_length {
            return Err(Error::ContextTooLong { needed, limit: self.config.context_length });
        }
        Ok(rows)
    }

    /// Runs the next layer of `run` on `cache` (the cache it was started on, untouched since);
    /// `true` once the last layer has run and the cache has advanced, with the output in
    /// [`LayerRun::output`]. The same operations on the same shapes as `run_layers`, so the
    /// result is bit-identical.
    pub fn run_next_layer(&self, run: &mut LayerRun, cache: &mut KvCache) -> Result<bool> {
        loop {
            let was = run.next;
            let done = self.run_next_block(run, cache)?;
            if done || run.next > was {
                return Ok(done);
            }
        }
    }

    /// Runs the next piece of a layer of `run`: its projections with the cache append, one query
    /// head of its attention (the last with the output projection), or its MLP block. Otherwise
    /// as [`SplitModel::run_next_layer`], and bit-identical to it: a layer is exactly these
    /// pieces one after the other. Late in a long prompt one layer of a 32-row chunk takes tens
    /// of milliseconds, nearly all of it attention; a piece takes a few, which is what a
    /// scheduler interleaving other sessions' steps holds them up for.
    pub fn run_next_block(&self, run: &mut LayerRun, cache: &mut KvCache) -> Result<bool> {
        if run.done {
            return Ok(true);
        }
        if run.next < run.end {
            let layer = &self.layers[run.next];
            run.stage = match std::mem::replace(&mut run.stage, Stage::Start) {
                Stage::Start => match layer.begin_attention(&run.x, &self.config, &self.rope, cache)? {
                    Attention::Done(x) => {
                        run.x = x;
                        Stage::Mlp
                    }
                    Attention::Heads(chunk) => Stage::Heads(chunk),
                },
                Stage::Heads(mut chunk) => {
                    if chunk.attend_next_head()? {
                        run.x = layer.end_attention(&run.x, chunk)?;
                        Stage::Mlp
                    } else {
                        Stage::Heads(chunk)
                    }
                }
                Stage::Mlp => {
                    run.x = layer.mlp_block(&run.x)?;
                    run.next += 1;
                    Stage::Start
                }
            };
        }
        if run.next == run.end {
            cache.advance(run.rows)?;
            run.done = true;
        }
        Ok(run.done)
    }

    /// The key/value layout of a cached layer: `(kv_heads, head_dim)`.
    pub fn kv_layout(&self) -> (usize, usize) {
        (self.config.n_kv_heads, self.config.head_dim)
    }

    fn run_layers_inner(&self, hidden: &Tensor, cache: &mut KvCache, mut trace: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
        let seq = self.check_run(hidden, cache)?;
        let mut x = hidden.clone();
        for layer in &self.layers[cache.range()] {
            x = layer.forward(&x, &self.config, &self.rope, cache)?;
            if let Some(t) = trace.as_deref_mut() {
                t.push(x.clone());
            }
        }
        cache.advance(seq)?;
        Ok(x)
    }

    /// One decode step of several sessions at once: `hidden[i]` (`[1, 1, hidden]`) is the next
    /// position of `caches[i]`. Every cache must end at the same layer; they may start at
    /// different layers, and positions may differ. Returns each session's output (`[1, 1, hidden]`)
    /// and advances each cache by one.
    ///
    /// A session joins the batch at its first layer: the layers `k..L` of a session split at `k`
    /// are a suffix of those of a session split lower, so from layer `k` on both rows share each
    /// layer's weight pass. Within a layer the rows share the norms, projections and MLP (one
    /// weight pass for all of them) and attend over their own caches on the shapes of
    /// [`SplitModel::run_layers`], so each output equals stepping that session alone bit for bit.
    /// Everything is checked before any cache changes.
    pub fn run_layers_batch(&self, hidden: &[Tensor], caches: &mut [&mut KvCache]) -> Result<Vec<Tensor>> {
        if hidden.len() != caches.len() {
            return Err(Error::InvalidArgument(format!(
                "a batched step needs one cache per activation, got {} activations and {} caches",
                hidden.len(),
                caches.len()
            )));
        }
        let Some(first) = caches.first() else { return Ok(Vec::new()) };
        let end = first.range().end;
        for (i, (h, cache)) in hidden.iter().zip(caches.iter()).enumerate() {
            let range = cache.range();
            self.check_range(&range)?;
            if range.end != end {
                return Err(Error::InvalidArgument(format!(
                    "a batched step needs every cache to end at the same layer: session 0 runs layers {:?} but session {i} runs {range:?}",
                    first.range()
                )));
            }
            let seq = self.check_hidden(h)?;
            if seq != 1 {
                return Err(Error::InvalidArgument(format!(
                    "a batched step takes one row per session, session {i} has {seq}"
                )));
            }
            let needed = cache.position() + 1;
            if needed > self.config.context_length {
                return Err(Error::ContextTooLong { needed, limit: self.config.context_length });
            }
        }
        // Rows in order of their first layer, so the rows running a layer are always a prefix.
        let mut order: Vec<usize> = (0..caches.len()).collect();
        order.sort_by_key(|&i| caches[i].range().start);
        let starts: Vec<usize> = order.iter().map(|&i| caches[i].range().start).collect();
        let mut sorted: Vec<&mut KvCache> = Vec::with_capacity(caches.len());
        {
            let mut slots: Vec<Option<&mut KvCache>> = caches.iter_mut().map(|c| Some(&mut **c)).collect();
            for &i in &order {
                sorted.push(slots[i].take().expect("each index once"));
            }
        }
        let mut x: Option<Tensor> = None;
        let mut active = 0;
        for layer in starts[0]..end {
            let joining = starts[active..].iter().take_while(|&&s| s == layer).count();
            if joining > 0 {
                let mut rows: Vec<Tensor> = x.take().into_iter().collect();
                rows.extend(order[active..active + joining].iter().map(|&i| hidden[i].clone()));
                x = Some(Tensor::cat(&rows, 0)?);
                active += joining;
            }
            let input = x.as_ref().expect("the first row joins at the first layer");
            x = Some(self.layers[layer].forward_batch(input, &self.config, &self.rope, &mut sorted[..active])?);
        }
        for cache in sorted.iter_mut() {
            cache.advance(1)?;
        }
        // Sessions with no layers (`k = L`) pass their activation through unchanged.
        let mut out: Vec<Option<Tensor>> = vec![None; hidden.len()];
        for (row, &i) in order.iter().enumerate() {
            out[i] = Some(if row < active { x.as_ref().expect("rows ran").narrow(0, row, 1)? } else { hidden[i].clone() });
        }
        Ok(out.into_iter().map(|t| t.expect("every session has an output")).collect())
    }

    /// How much the logits move per unit change of each dimension of the last layer's output, to
    /// first order: `γ_d²·Σ_v W_vd²` with `γ` the final norm's weight and `W` the LM head (the
    /// norm's common 1/rms factor left out). The sensitivity behind the transmit gains of
    /// `Normalization::Allocate` at `k = L`.
    pub fn head_sensitivity(&self) -> Result<Vec<f32>> {
        let n = self.config.hidden_size;
        // The head applied to the identity: row d is column d of W (one pass over the weights).
        let columns = self.lm_head.forward(&Tensor::eye(n, DType::F32, &self.device)?)?;
        let norms = columns.sqr()?.sum(1)?.to_vec1::<f32>()?;
        let gamma = self.final_norm.weight.to_vec1::<f32>()?;
        Ok(norms.iter().zip(&gamma).map(|(w, g)| w * g * g).collect())
    }

    /// The head's full first-order metric on the last layer's output: the `hidden × hidden`
    /// matrix `γ_d·γ_e·Σ_v W_vd·W_ve` (row-major), whose diagonal is [`Self::head_sensitivity`].
    /// A change `e` of the output moves the logits by `eᵀ·M·e` in squared norm (the norm's common
    /// 1/rms factor left out).
    pub fn head_metric(&self) -> Result<Vec<f32>> {
        let n = self.config.hidden_size;
        let columns = self.head_columns()?;
        let gamma = self.final_norm.weight.to_vec1::<f32>()?;
        let g = columns.matmul(&columns.t()?)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(g.iter().enumerate().map(|(i, v)| v * gamma[i / n] * gamma[i % n]).collect())
    }

    /// The LM head's weights transposed, `[hidden, vocab]`: row d is column d of W (the head
    /// applied to the identity, one pass over the weights).
    pub fn head_columns(&self) -> Result<Tensor> {
        Ok(self.lm_head.forward(&Tensor::eye(self.config.hidden_size, DType::F32, &self.device)?)?)
    }

    /// The final norm's weight γ.
    pub fn final_norm_weight(&self) -> Result<Vec<f32>> {
        Ok(self.final_norm.weight.to_vec1::<f32>()?)
    }

    /// Final norm and LM head on every position: `[1, seq, hidden]` → `[seq, vocab]` logits.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.check_hidden(hidden)?;
        let x = self.final_norm.forward(&hidden.i(0)?)?;
        match &self.lm_head_dense {
            Some(w) if x.dim(0)? >= layer::DENSE_MIN_ROWS => Ok(x.matmul(&w.t()?)?),
            _ => {
                // A Q8_0 head (both default models') takes our kernel: the same bits as
                // candle's, faster on one row and reading the weights once per four rows.
                let ours = match &self.lm_head {
                    QMatMul::QTensor(w) => q8_0::matmul_rows(w, &x)?,
                    _ => None,
                };
                match ours {
                    Some(logits) => Ok(logits),
                    None => Ok(self.lm_head.forward(&x)?),
                }
            }
        }
    }

    /// Final norm and LM head on the last position only: `[vocab]` logits.
    pub fn head_last(&self, hidden: &Tensor) -> Result<Tensor> {
        let seq = self.check_hidden(hidden)?;
        let last = hidden.narrow(1, seq - 1, 1)?;
        Ok(self.head(&last)?.i(0)?)
    }

    /// [`SplitModel::head_last`] of several sessions with one pass over the head's weights:
    /// `[vocab]` logits per session, each bit-identical to its own `head_last`.
    pub fn head_last_batch(&self, hidden: &[Tensor]) -> Result<Vec<Tensor>> {
        if hidden.is_empty() {
            return Ok(Vec::new());
        }
        let last = hidden
            .iter()
            .map(|h| {
                let seq = self.check_hidden(h)?;
                Ok(h.narrow(1, seq - 1, 1)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let x = self.final_norm.forward(&Tensor::cat(&last, 0)?.squeeze(1)?)?;
        // A Q8_0 head (both default models') takes our kernel, which reads it once per four
        // sessions instead of once per session, with each row's bits unchanged.
        let tiled = match &self.lm_head {
            QMatMul::QTensor(w) => q8_0::matmul_rows(w, &x)?,
            _ => None,
        };
        let logits = match tiled {
            Some(l) => l,
            None => layer::matmul_rows(&self.lm_head, &x)?,
        };
        (0..hidden.len()).map(|i| Ok(logits.i(i)?)).collect()
    }

    fn check_range(&self, range: &Range<usize>) -> Result<()> {
        if range.start > range.end || range.end > self.config.n_layers {
            return Err(Error::LayerRange { start: range.start, end: range.end, n_layers: self.config.n_layers });
        }
        Ok(())
    }

    /// Returns the sequence length of a well-formed `[1, seq, hidden]` activation.
    fn check_hidden(&self, hidden: &Tensor) -> Result<usize> {
        match *hidden.dims() {
            [1, seq, h] if seq > 0 && h == self.config.hidden_size => Ok(seq),
            _ => Err(Error::HiddenShape { got: hidden.dims().to_vec(), hidden: self.config.hidden_size }),
        }
    }
}

/// A GGUF's tensors must lie inside the file; a truncated download otherwise fails much later
/// with an unhelpful short-read error.
fn check_tensor_extent(content: &gguf_file::Content, file_len: u64) -> std::result::Result<(), String> {
    let end = content
        .tensor_infos
        .values()
        .map(|t| {
            let elems = t.shape.elem_count();
            let bytes = elems / t.ggml_dtype.block_size() * t.ggml_dtype.type_size();
            content.tensor_data_offset + t.offset + bytes as u64
        })
        .max()
        .unwrap_or(0);
    if end > file_len {
        return Err(format!("file is truncated: its tensors need {end} bytes but it has {file_len}"));
    }
    Ok(())
}

struct Loader<'a, R> {
    content: &'a gguf_file::Content,
    reader: &'a mut R,
    device: &'a Device,
    options: LoadOptions,
}

impl<R: Read + Seek> Loader<'_, R> {
    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        self.content
            .tensor(self.reader, name, self.device)
            .map_err(|e| Error::MissingTensor { name: name.into(), reason: e.to_string() })
    }

    fn dense(&mut self, name: &str) -> Result<Tensor> {
        Ok(self.qtensor(name)?.dequantize(self.device)?)
    }

    fn linear(&mut self, prefix: &str) -> Result<Linear> {
        let q = self.qtensor(&format!("{prefix}.weight"))?;
        let scalar_kernel = matches!(q.dtype(), GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1);
        let dense = if self.options.dense_prefill && scalar_kernel { Some(q.dequantize(self.device)?) } else { None };
        let weight = layer::Weight::new(q)?;
        let bias_name = format!("{prefix}.bias");
        let bias = if self.content.tensor_infos.contains_key(&bias_name) { Some(self.dense(&bias_name)?) } else { None };
        Ok(Linear { weight, dense, bias, lora: None })
    }
}
