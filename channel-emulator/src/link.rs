//! What the link does to a message in flight. The proxy decodes every activation into a tensor
//! and hands it to the uplink; the channel models (fading, noise, loss, air time) implement
//! [`Uplink`] and are chained here. Today only the clean link exists.

use split_core::wire::WireTensor;
use splitinfer_proto::v1 as pb;

/// Counters of what crossed the link.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkStats {
    pub activations: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Activations whose tensor did not decode; forwarded untouched for the edge to refuse.
    pub undecodable: u64,
}

/// Acts on the hidden state the UE sends.
pub trait Uplink: Send {
    /// May change `activation` in place. `tensor` is its decoded hidden state.
    fn transmit(&mut self, activation: &mut pb::Activation, tensor: &WireTensor);
}

/// A clean link: forwards the bytes unchanged.
#[derive(Debug, Default)]
pub struct Clean;

impl Uplink for Clean {
    fn transmit(&mut self, _: &mut pb::Activation, _: &WireTensor) {}
}

/// Decodes and accounts an activation, then lets `link` act on it.
pub fn on_activation(link: &mut dyn Uplink, stats: &mut LinkStats, activation: &mut pb::Activation) {
    stats.activations += 1;
    let Some(tensor) = activation.hidden.clone() else {
        stats.undecodable += 1;
        return;
    };
    stats.bytes += tensor.data.len() as u64;
    match WireTensor::try_from(tensor) {
        Ok(t) => {
            stats.rows += t.shape().get(1).copied().unwrap_or(0) as u64;
            link.transmit(activation, &t);
        }
        Err(e) => {
            stats.undecodable += 1;
            tracing::debug!(error = %e, "activation does not decode; forwarding untouched");
        }
    }
}
