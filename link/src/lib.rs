//! `splitinfer-link`: everything between the UE's last layer and the edge's first, with no model
//! code (the emulator builds on it without candle).
//!
//! - [`wire`]: tensors as bytes with dtype and shape; value dtypes (f32, f16, bf16) and the
//!   digital link's quantized ones, whose codecs are in [`codec`]. [`convert`] turns the
//!   generated `splitinfer.v1` types into these and back.
//! - [`channel`]: the channel models (Nakagami-m fading, AWGN with the receiver's equalizer,
//!   outage loss with HARQ, element-wise erasure, air time, traces and presets), shared by the
//!   emulator and the offline tools.
//! - [`transform`]: the transmitter's normalization and the receiver's concealment of erased
//!   elements, agreed in `Open` as a [`transform::LinkSetup`].
//! - [`calibration`]: per-boundary activation statistics and their versioned file.

pub mod calibration;
pub mod channel;
pub mod codec;
pub mod convert;
pub mod error;
pub mod transform;
pub mod wire;

pub use error::{Error, Result};
