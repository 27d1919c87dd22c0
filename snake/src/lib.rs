//! Snake Learning for splitinfer (Yu, Li, Chen, Zhao, Zhang): edge nodes take turns fine-tuning
//! their slice of the edge's layers on their own text, passing the model state along a serpentine
//! order, so that the layers after the split become robust to the channel's damage
//! (docs/snake.md).
//!
//! - [`layer`]: a decoder layer that can learn, its frozen weights in f32 with LoRA adapters on
//!   the query and value projections, from candle's differentiable primitives; its gradients are
//!   checked against finite differences.
//! - [`model`]: the edge's layers `k..L` of a GGUF model as such layers, with the final norm and
//!   head, and their adapters as the file `edge-server --adapter` serves
//!   (`split_core::adapter`).
//! - [`train`]: the UE's layers on the serving model, the link injected at the split, AdamW
//!   with gradient clipping.
//! - [`node`]: a node process's gRPC service (`splitinfer.v1.SnakeNode`): its text, its
//!   optimizer state, training the slice it is asked to from the state it is given or fetches
//!   from a peer.
//! - [`coordinate`]: the serpentine turns, federated averaging and centralized training over the
//!   node processes, with the bytes that cross between them.
//! - [`eval`]: held-out perplexity through the serving model with an adapter, clean, on the bad
//!   preset and on a mobility trace.
//!
//! `splitinfer snake run` (cli/src/snake.rs) runs the whole experiment and writes the report.

pub mod coordinate;
pub mod eval;
pub mod layer;
pub mod model;
pub mod node;
pub mod train;
