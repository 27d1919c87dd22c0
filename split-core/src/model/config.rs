//! Hyper-parameters of a decoder-only model, read from GGUF metadata.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use crate::error::{Error, Result};

/// The model families we can split. Each differs from llama in a few switches, kept here rather
/// than in a second copy of the layer code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// llama, SmolLM, TinyLlama, Mistral-like dense models: no attention biases, interleaved RoPE
    /// (llama.cpp's converter permutes q/k so that pairs are adjacent).
    Llama,
    /// Qwen2 / Qwen2.5: biases on q, k, v and NeoX-style (half-split) RoPE.
    Qwen2,
}

impl Architecture {
    pub const SUPPORTED: &'static str = "llama, qwen2";

    pub fn from_gguf_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }

    /// NeoX-style rotary embedding rotates the two halves of a head; the llama GGUF layout
    /// rotates adjacent pairs.
    pub fn rope_is_neox(self) -> bool {
        matches!(self, Self::Qwen2)
    }
}

/// Shapes and constants of a model, enough to build its layers and check activations.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub n_layers: usize,
    pub hidden_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_size: usize,
    pub rope_theta: f32,
    pub rms_eps: f64,
    pub context_length: usize,
    pub vocab_size: usize,
    /// Human name from `general.name`, for logs and reports.
    pub name: String,
}

impl ModelConfig {
    pub fn from_gguf(arch: Architecture, md: &HashMap<String, Value>) -> Result<Self> {
        let prefix = arch.gguf_name();
        let key = |k: &str| format!("{prefix}.{k}");
        let get_u32 = |k: &str| -> Result<usize> {
            let k = key(k);
            md.get(&k)
                .and_then(|v| v.to_u32().ok().or_else(|| v.to_u64().ok().map(|x| x as u32)))
                .map(|v| v as usize)
                .ok_or(Error::MissingMetadata { key: k })
        };
        let get_f32 = |k: &str| -> Result<f32> {
            let k = key(k);
            md.get(&k).and_then(|v| v.to_f32().ok()).ok_or(Error::MissingMetadata { key: k })
        };

        let hidden_size = get_u32("embedding_length")?;
        let n_heads = get_u32("attention.head_count")?;
        let n_kv_heads = get_u32("attention.head_count_kv").unwrap_or(n_heads);
        let head_dim = get_u32("rope.dimension_count").unwrap_or(hidden_size / n_heads.max(1));
        let vocab_size = match get_u32("vocab_size") {
            Ok(v) => v,
            Err(_) => md
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .ok_or_else(|| Error::MissingMetadata { key: key("vocab_size") })?,
        };
        let config = Self {
            architecture: arch,
            n_layers: get_u32("block_count")?,
            hidden_size,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_size: get_u32("feed_forward_length")?,
            rope_theta: get_f32("rope.freq_base").unwrap_or(10_000.0),
            rms_eps: f64::from(get_f32("attention.layer_norm_rms_epsilon")?),
            context_length: get_u32("context_length").unwrap_or(2048),
            vocab_size,
            name: md
                .get("general.name")
                .and_then(|v| v.to_string().ok().cloned())
                .unwrap_or_else(|| prefix.to_string()),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidArgument(what));
        if self.n_layers == 0 || self.hidden_size == 0 || self.n_heads == 0 || self.n_kv_heads == 0 {
            return bad(format!("model has a zero dimension: {self:?}"));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "head count {} is not a multiple of the kv head count {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("rotary dimension {} is odd", self.head_dim));
        }
        Ok(())
    }
}
