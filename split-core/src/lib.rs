//! `split-core`: the shared library of splitinfer.
//!
//! - [`model`]: a GGUF decoder-only LLM (llama, qwen2) whose split is its API — `embed`, run any
//!   contiguous range of layers with that range's own [`model::KvCache`], `head`.
//! - [`tokenizer`]: the byte-level BPE tokenizer rebuilt from the GGUF's own metadata.
//! - [`split`]: the split point `k` as a checked domain value, and a split decision
//!   (`Split { k, epoch }`), the one shape a moving split has on both ends.
//! - [`wire`]: tensors as bytes with dtype and shape, as they cross the network (from
//!   `splitinfer-link`), to and from candle tensors; [`convert`] turns the generated
//!   `splitinfer.v1` types into domain types and back.
//! - [`boundary`]: what happens to the hidden state between the two sides, in process; the
//!   channel models plug in here.
//! - [`channel`], [`transform`], [`calibration`]: re-exported from `splitinfer-link`, the crate
//!   of everything on the air (channel models, codecs, normalization, concealment), which the
//!   emulator uses without candle; [`calibrate`] measures a model's calibration statistics.
//! - [`migrate`]: live split changes — moving or exactly recomputing the KV caches of layers that
//!   change sides, the UE's log of boundary hidden states, and the cost model choosing between them.
//! - [`protocol`]: the session protocol's messages (`Open`, `Step`, `Migrate`, `Token`,
//!   `Migrated`, …) as domain values, converted from and to the generated types at the service
//!   boundary by both the UE and the edge.
//! - [`pipeline`]: monolithic and in-process split execution, and the generation loop.
//! - [`sampling`]: greedy and seeded temperature / top-k / top-p sampling.
//! - [`perplexity`]: sliding-window perplexity, optionally split with a boundary (the grids of
//!   split points × links are in `splitinfer-rl`).
//! - [`privacy`]: token-inversion attacks on the boundary state (nearest embedding, a linear
//!   probe), the privacy floor of the split decision.
//! - [`adapter`]: low-rank adapters on the edge's layers (Snake Learning's output, served by
//!   `edge-server --adapter`), in a safetensors file tied to the model's sha256.
//! - [`bundle`]: a loaded model with its tokenizer and identity, and model resolution.
//! - [`assets`] and [`corpus`]: fetching the model and the Brown corpus into a cache, and turning
//!   the tagged corpus back into text.

pub mod adapter;
pub mod assets;
pub mod boundary;
pub mod bundle;
pub mod calibrate;
pub mod convert;
pub mod corpus;
pub mod error;
pub mod migrate;
pub mod model;
pub mod perplexity;
pub mod privacy;
pub mod protocol;
pub mod rotation;
pub mod pipeline;
pub mod sampling;
pub mod split;
pub mod tokenizer;
pub mod wire;

pub use error::{Error, Result};
/// The channel models live in the link crate, with no model code; re-exported for the model side.
pub use splitinfer_link::{calibration, channel, transform};
