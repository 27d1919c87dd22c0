//! What happens to the hidden state between the UE's layers and the edge's, in process.
//!
//! The networked system sends it through gRPC and the channel emulator; in process (`generate
//! --split`, `ppl --split`, the agent's profiler) a [`Boundary`] stands in for that path. The
//! link's transmitter, channel and receiver plug in here ([`ChannelBoundary`]), so offline
//! measurements see exactly what the UE, the emulator and the edge do.

use candle_core::Tensor;
use splitinfer_link::calibration::{BoundaryStats, Calibration};
use splitinfer_link::channel::{Channel, Transmission};
use splitinfer_link::transform::LinkSetup;

use crate::error::Result;
use crate::wire::{CandleWire, WireDType, WireTensor};

/// Carries the hidden state `[1, seq, hidden]` across the split.
pub trait Boundary: Send {
    /// `position` is the absolute position of the first row (0 for a window's prefill).
    fn transmit(&mut self, hidden: &Tensor, position: usize) -> Result<Tensor>;

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
    fn transmit(&mut self, hidden: &Tensor, _position: usize) -> Result<Tensor> {
        WireTensor::from_tensor(hidden, self.dtype)?.to_tensor(hidden.device())
    }

    fn describe(&self) -> String {
        format!("clean wire {}", self.dtype)
    }
}

/// The whole link at boundary `k`: the UE's normalization and codec, the channel, the edge's
/// decoding, denormalization and concealment ([`LinkSetup::send`]).
pub struct ChannelBoundary {
    pub channel: Channel,
    pub setup: LinkSetup,
    /// The calibration statistics of this boundary, when the setup needs them.
    pub stats: Option<BoundaryStats>,
    pub last: Transmission,
}

impl ChannelBoundary {
    /// The reference link: values sent as they are in `dtype`, lost elements zero-filled.
    pub fn plain(channel: Channel, dtype: WireDType) -> Self {
        Self { channel, setup: LinkSetup { dtype, ..LinkSetup::default() }, stats: None, last: Transmission::default() }
    }

    /// `setup` at boundary `k`, taking that boundary's statistics from `calibration` when the
    /// setup needs them (and refusing to go on without).
    pub fn new(channel: Channel, setup: LinkSetup, calibration: Option<&Calibration>, k: usize) -> Result<Self> {
        let stats = match (setup.needs_calibration(), calibration) {
            (false, _) => None,
            (true, Some(c)) => Some(c.boundary(k)?.clone()),
            (true, None) => {
                return Err(crate::Error::InvalidArgument(format!(
                    "normalization {} / concealment {} need a calibration file (--calibration; make one with `splitinfer calibrate`)",
                    setup.normalization, setup.concealment
                )));
            }
        };
        Ok(Self { channel, setup, stats, last: Transmission::default() })
    }
}

impl Boundary for ChannelBoundary {
    fn transmit(&mut self, hidden: &Tensor, position: usize) -> Result<Tensor> {
        let values = hidden.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (out, t) = self.setup.send(&mut self.channel, hidden.dims().to_vec(), &values, self.stats.as_ref(), position)?;
        self.last = t;
        Ok(Tensor::from_vec(out, hidden.dims(), hidden.device())?)
    }

    fn describe(&self) -> String {
        format!(
            "channel {:?}, wire {}, normalization {}, concealment {}",
            self.channel.config(),
            self.setup.dtype,
            self.setup.normalization,
            self.setup.concealment
        )
    }
}
