//! The edge's side of a split as something that can learn: layers `k..L` dequantized from the
//! model's GGUF into f32 and frozen, LoRA adapters on their query and value projections, the
//! final norm and the LM head (frozen). The UE's side stays the serving model
//! (`split_core::model::SplitModel`), which needs no gradients.

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::StdRng;
use split_core::adapter::{Adapter, LayerAdapter, LowRank};
use split_core::model::ModelConfig;

use crate::layer::{LayerShape, LayerWeights, Lora, TrainableLayer, rope_tables};

/// How the adapters are made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdapterSpec {
    pub rank: usize,
    pub alpha: f64,
    /// Seeds the initial `A` matrices (every method starts from the same adapters).
    pub seed: u64,
}

impl Default for AdapterSpec {
    /// docs/snake.md: rank 8, α = 16, seed 0.
    fn default() -> Self {
        Self { rank: 8, alpha: 16.0, seed: 0 }
    }
}

/// Layers `first..L`, the final norm and the head.
#[derive(Debug)]
pub struct EdgeStack {
    pub shape: LayerShape,
    pub first: usize,
    pub layers: Vec<TrainableLayer>,
    pub spec: AdapterSpec,
    final_norm: Tensor,
    head: Tensor,
    cos: Tensor,
    sin: Tensor,
}

impl EdgeStack {
    /// Loads layers `first..L` of the GGUF at `path` (whose `config` the serving model read),
    /// for windows of up to `max_positions` tokens.
    pub fn load(path: &Path, config: &ModelConfig, first: usize, spec: AdapterSpec, max_positions: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(first <= config.n_layers, "split {first} is outside 0..={}", config.n_layers);
        anyhow::ensure!(spec.rank > 0, "adapter rank must be at least 1");
        let device = Device::Cpu;
        let mut reader = BufReader::new(File::open(path).map_err(|e| anyhow::anyhow!("cannot open model {}: {e}", path.display()))?);
        let content = gguf_file::Content::read(&mut reader)?;
        let mut dense = |name: &str| -> anyhow::Result<Tensor> {
            let q = content.tensor(&mut reader, name, &device).map_err(|e| anyhow::anyhow!("model tensor {name}: {e}"))?;
            Ok(q.dequantize(&device)?.to_dtype(DType::F32)?)
        };
        let shape = LayerShape {
            hidden: config.hidden_size,
            heads: config.n_heads,
            kv_heads: config.n_kv_heads,
            intermediate: config.ffn_size,
            rms_eps: config.rms_eps,
            rope_theta: f64::from(config.rope_theta),
            neox: config.architecture.rope_is_neox(),
        };
        anyhow::ensure!(shape.head_dim() == config.head_dim, "head dim {} is not hidden / heads", config.head_dim);
        let has = |name: &str| content.tensor_infos.contains_key(name);
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let mut layers = Vec::with_capacity(config.n_layers - first);
        for i in first..config.n_layers {
            let p = format!("blk.{i}");
            let bias = |name: String, dense: &mut dyn FnMut(&str) -> anyhow::Result<Tensor>| -> anyhow::Result<Option<Tensor>> {
                if has(&name) { Ok(Some(dense(&name)?)) } else { Ok(None) }
            };
            let weights = LayerWeights {
                attn_norm: dense(&format!("{p}.attn_norm.weight"))?,
                wq: dense(&format!("{p}.attn_q.weight"))?,
                wk: dense(&format!("{p}.attn_k.weight"))?,
                wv: dense(&format!("{p}.attn_v.weight"))?,
                wo: dense(&format!("{p}.attn_output.weight"))?,
                bq: bias(format!("{p}.attn_q.bias"), &mut dense)?,
                bk: bias(format!("{p}.attn_k.bias"), &mut dense)?,
                bv: bias(format!("{p}.attn_v.bias"), &mut dense)?,
                ffn_norm: dense(&format!("{p}.ffn_norm.weight"))?,
                w_gate: dense(&format!("{p}.ffn_gate.weight"))?,
                w_up: dense(&format!("{p}.ffn_up.weight"))?,
                w_down: dense(&format!("{p}.ffn_down.weight"))?,
            };
            let (h, kv) = (shape.hidden, shape.kv_heads * shape.head_dim());
            let lora_q = Lora::seeded(spec.rank, h, h, spec.alpha, &mut rng, &device)?;
            let lora_v = Lora::seeded(spec.rank, h, kv, spec.alpha, &mut rng, &device)?;
            layers.push(TrainableLayer { shape, weights, lora_q, lora_v });
        }
        let final_norm = dense("output_norm.weight")?;
        // Tied embeddings (SmolLM2, Qwen2.5-0.5B) have no output.weight: the head is the table.
        let head = if has("output.weight") { dense("output.weight")? } else { dense("token_embd.weight")? };
        let (cos, sin) = rope_tables(&shape, max_positions, DType::F32, &device)?;
        Ok(Self { shape, first, layers, spec, final_norm, head, cos, sin })
    }

    /// The number of layers of the whole model.
    pub fn n_layers(&self) -> usize {
        self.first + self.layers.len()
    }

    /// The final hidden state for the boundary state `h` (`[seq, hidden]`, positions `0..seq`).
    pub fn hidden(&self, h: &Tensor) -> anyhow::Result<Tensor> {
        let (seq, _) = h.dims2()?;
        anyhow::ensure!(seq <= self.cos.dim(0)?, "window of {seq} tokens exceeds the {} positions loaded", self.cos.dim(0)?);
        let mut x = h.clone();
        for layer in &self.layers {
            x = layer.forward(&x, &self.cos, &self.sin)?;
        }
        Ok(x)
    }

    /// Logits `[seq, vocab]` for the boundary state `h`.
    pub fn logits(&self, h: &Tensor) -> anyhow::Result<Tensor> {
        let x = self.hidden(h)?;
        let x = crate::layer::rms_norm(&x, &self.final_norm, self.shape.rms_eps)?;
        Ok(x.matmul(&self.head.t()?)?)
    }

    /// The mean next-token cross-entropy of `targets` (one per row of `h`).
    pub fn loss(&self, h: &Tensor, targets: &[u32]) -> anyhow::Result<Tensor> {
        let logits = self.logits(h)?;
        let targets = Tensor::new(targets, h.device())?;
        Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
    }

    /// The trainable variables of layers `range` (absolute layer indices), in a fixed order.
    pub fn vars(&self, range: Range<usize>) -> Vec<Var> {
        self.layers.iter().enumerate().filter(|(j, _)| range.contains(&(self.first + j))).flat_map(|(_, l)| l.vars()).collect()
    }

    /// Every trainable variable.
    pub fn all_vars(&self) -> Vec<Var> {
        self.vars(self.first..self.n_layers())
    }

    /// The adapters as the file the edge serves.
    pub fn adapter(&self, model_sha256: &str) -> anyhow::Result<Adapter> {
        let low_rank = |l: &Lora| -> anyhow::Result<LowRank> {
            Ok(LowRank { a: l.a.as_tensor().copy()?, b: l.b.as_tensor().copy()?, scale: l.scale })
        };
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(j, l)| Ok((self.first + j, LayerAdapter { q: low_rank(&l.lora_q)?, v: low_rank(&l.lora_v)? })))
            .collect::<anyhow::Result<_>>()?;
        Ok(Adapter { model_sha256: model_sha256.to_string(), rank: self.spec.rank, alpha: self.spec.alpha, trained_split: self.first, layers })
    }

    /// Sets the adapters of the layers `adapter` holds (others keep theirs).
    pub fn set_adapter(&self, adapter: &Adapter) -> anyhow::Result<()> {
        anyhow::ensure!(adapter.rank == self.spec.rank, "adapter rank {} is not {}", adapter.rank, self.spec.rank);
        for (&i, a) in &adapter.layers {
            anyhow::ensure!((self.first..self.n_layers()).contains(&i), "adapter layer {i} is not an edge layer here ({}..{})", self.first, self.n_layers());
            let l = &self.layers[i - self.first];
            l.lora_q.a.set(&a.q.a)?;
            l.lora_q.b.set(&a.q.b)?;
            l.lora_v.a.set(&a.v.a)?;
            l.lora_v.b.set(&a.v.b)?;
        }
        Ok(())
    }
}
