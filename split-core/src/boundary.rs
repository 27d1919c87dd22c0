//! What happens to the hidden state between the UE's layers and the edge's, in process.
//!
//! The networked system sends it through gRPC and the channel emulator; in process (`generate
//! --split`, `ppl --split`, the agent's profiler) a [`Boundary`] stands in for that path. The
//! channel models plug in here, so offline measurements see exactly what the emulator does.

use candle_core::Tensor;

use crate::error::Result;
use crate::wire::{WireDType, WireTensor};

/// Carries the hidden state `[1, seq, hidden]` across the split.
pub trait Boundary: Send {
    fn transmit(&mut self, hidden: &Tensor) -> Result<Tensor>;

    /// One line for logs and reports, e.g. `wire f16`.
    fn describe(&self) -> String;
}

/// A clean link: the tensor is encoded in the wire dtype and decoded again, nothing else.
/// With f32 this is the identity to the bit.
#[derive(Debug, Clone, Copy, Default)]
pub struct CleanWire {
    pub dtype: WireDType,
}

impl Boundary for CleanWire {
    fn transmit(&mut self, hidden: &Tensor) -> Result<Tensor> {
        WireTensor::from_tensor(hidden, self.dtype)?.to_tensor(hidden.device())
    }

    fn describe(&self) -> String {
        format!("clean wire {}", self.dtype)
    }
}
