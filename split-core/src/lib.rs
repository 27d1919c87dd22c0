//! `split-core`: the shared library of splitinfer.
//!
//! - [`model`]: a GGUF decoder-only LLM (llama, qwen2) whose split is its API — `embed`, run any
//!   contiguous range of layers with that range's own [`model::KvCache`], `head`.
//! - [`tokenizer`]: the byte-level BPE tokenizer rebuilt from the GGUF's own metadata.
//! - [`split`]: the split point `k` as a checked domain value.
//! - [`wire`]: tensors as bytes with dtype and shape, as they cross the network; [`convert`]
//!   turns the generated `splitinfer.v1` types into these domain types and back.
//! - [`boundary`]: what happens to the hidden state between the two sides, in process; the
//!   channel models plug in here.
//! - [`channel`]: the channel models (Nakagami-m fading, AWGN, outage loss with retransmission,
//!   element-wise erasure, air time), shared by the emulator and the offline tools.
//! - [`migrate`]: live split changes — moving or exactly recomputing the KV caches of layers that
//!   change sides, the UE's log of boundary hidden states, and the cost model choosing between them.
//! - [`pipeline`]: monolithic and in-process split execution, and the generation loop.
//! - [`sampling`]: greedy and seeded temperature / top-k / top-p sampling.
//! - [`perplexity`]: sliding-window perplexity, optionally split with a boundary; [`profile`]:
//!   perplexity over a grid of split points × channel conditions, to a resumable CSV.
//! - [`bundle`]: a loaded model with its tokenizer and identity, and model resolution.
//! - [`assets`] and [`corpus`]: fetching the model and the Brown corpus into a cache, and turning
//!   the tagged corpus back into text.

pub mod assets;
pub mod boundary;
pub mod bundle;
pub mod channel;
pub mod convert;
pub mod corpus;
pub mod error;
pub mod migrate;
pub mod model;
pub mod perplexity;
pub mod profile;
pub mod pipeline;
pub mod sampling;
pub mod split;
pub mod tokenizer;
pub mod wire;

pub use error::{Error, Result};
