//! The model's own tokenizer, rebuilt from GGUF metadata (`tokenizer.ggml.*`).
//!
//! GGUF files carry the vocabulary and merges but no `tokenizer.json`; the byte-level BPE is
//! assembled here with the `tokenizers` crate. The pre-tokenizer follows the `tokenizer.ggml.pre`
//! name the same way llama.cpp does: `smollm` splits digits one by one before the GPT-2 regex,
//! `qwen2` uses Qwen's own split regex.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};

const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;

/// Byte-level BPE tokenizer plus the special ids generation needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos: Vec<u32>,
    bos: Option<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("eos", &self.eos).field("bos", &self.bos).finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Reads the tokenizer of the GGUF file at `path`.
    pub fn from_gguf_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ModelNotFound { path: path.into(), hint: String::new() },
            _ => Error::Io { what: "cannot open model file", path: path.into(), source: e },
        })?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| Error::CorruptModel { path: path.into(), reason: e.to_string() })?;
        Self::from_gguf_metadata(&content.metadata)
    }

    pub fn from_gguf_metadata(md: &HashMap<String, gguf_file::Value>) -> Result<Self> {
        let missing = |key: &str| Error::MissingMetadata { key: key.into() };
        let model = md.get("tokenizer.ggml.model").and_then(|v| v.to_string().ok()).ok_or_else(|| missing("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!("tokenizer model {model:?} is not supported; only byte-level BPE (gpt2) is")));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            md.get(key)
                .and_then(|v| v.to_vec().ok())
                .ok_or_else(|| missing(key))?
                .iter()
                .map(|v| v.to_string().cloned().map_err(|_| missing(key)))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i32> = md
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect())
            .unwrap_or_default();
        let id = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());

        let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::Tokenizer(format!("merge {m:?} is not two symbols")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::Tokenizer(format!("cannot build BPE: {e}")))?;

        let pre = md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map(String::as_str).unwrap_or("default");
        let byte_level = ByteLevel::new(false, false, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "smollm" | "starcoder" | "refact" => {
                Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
            }
            "qwen2" => {
                let split = Split::new(SplitPattern::Regex(QWEN2_PATTERN.into()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(|e| Error::Tokenizer(format!("bad split regex: {e}")))?;
                Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()]).into()
            }
            "default" | "gpt2" | "gpt-2" => byte_level.into(),
            other => {
                tracing::warn!(pre = other, "unknown tokenizer.ggml.pre; using the GPT-2 byte-level split");
                byte_level.into()
            }
        };

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter())
            .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner.add_special_tokens(&specials);

        let mut eos: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
        // Base-model text ends with <|endoftext|>; instruct turns with the declared EOS.
        if let Some(&eot) = tokens.iter().position(|t| t == "<|endoftext|>").map(|i| i as u32).as_ref()
            && !eos.contains(&eot)
        {
            eos.push(eot);
        }
        let add_bos = md.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
        Ok(Self { inner, eos, bos: id("tokenizer.ggml.bos_token_id"), add_bos })
    }

    /// Text → token ids (with BOS when the model asks for one). Special-token text such as
    /// `<|im_start|>` is recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos
            && let Some(bos) = self.bos
        {
            ids.push(bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids → text, special tokens included verbatim.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Whether generation should stop at `id`.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos.contains(&id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Prefix-stable streaming decode: call with the ids generated so far; returns the newly
    /// completed text since the last call (bytes of an unfinished UTF-8 character wait).
    pub fn decode_incremental(&self, ids: &[u32], printed: &mut usize) -> Result<String> {
        let text = self.decode(ids)?;
        if text.ends_with('\u{fffd}') {
            return Ok(String::new());
        }
        let Some(new) = text.get(*printed..).map(str::to_string) else { return Ok(String::new()) };
        *printed = text.len();
        Ok(new)
    }
}
