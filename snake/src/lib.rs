//! Snake Learning for splitinfer (Yu, Li, Chen, Zhao, Zhang): edge nodes take turns fine-tuning
//! their slice of the edge's layers on their own text, passing the model state along a serpentine
//! order, so that the layers after the split become robust to the channel's damage.
//!
//! Built so far:
//! - [`layer`]: a decoder layer that can learn, its frozen weights in f32 with LoRA adapters on
//!   the query and value projections, from candle's differentiable primitives; its gradients are
//!   checked against finite differences.
//!
//! Still to come (issue "Snake Learning"): loading the frozen weights from the model's GGUF, the
//! channel injected at the split during training, AdamW with clipping, the node processes and
//! their serpentine rounds, the baselines, the adapter file the edge serves, and the report.

pub mod layer;
