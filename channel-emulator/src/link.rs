//! What the link does to a message in flight. The proxy decodes every activation into a tensor
//! and hands it to the uplink: [`Clean`] forwards it untouched, [`Impaired`] runs the shared
//! channel models (`split_core::channel`) on it and says how long its air time is.

use std::time::Duration;

use splitinfer_link::channel::{Channel, Transmission};

use crate::control::{Record, Shared};
use splitinfer_link::wire::WireTensor;
use splitinfer_proto::v1 as pb;

/// Counters of what crossed the link.
#[derive(Debug, Default, Clone)]
pub struct LinkStats {
    pub activations: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Activations whose tensor did not decode; forwarded untouched for the edge to refuse.
    pub undecodable: u64,
    pub packets: u64,
    pub lost_packets: u64,
    pub retransmissions: u64,
    pub airtime: Duration,
}

impl LinkStats {
    fn add(&mut self, t: &Transmission) {
        self.packets += t.packets as u64;
        self.lost_packets += t.lost_packets as u64;
        self.retransmissions += t.retransmissions;
        self.airtime += t.airtime;
    }
}

/// Acts on the hidden state the UE sends.
pub trait Uplink: Send {
    /// May change `activation` in place (`tensor` is its decoded hidden state); returns what the
    /// transmission did, including its air time, which the proxy waits before forwarding.
    fn transmit(&mut self, activation: &mut pb::Activation, tensor: &WireTensor) -> Transmission;
    /// The UEs that share the uplink now, this one included (see `--shared-uplink`).
    fn set_sharers(&mut self, _n: usize) {}
}

/// A clean link: forwards the bytes unchanged, at once.
#[derive(Debug, Default)]
pub struct Clean;

impl Uplink for Clean {
    fn transmit(&mut self, _: &mut pb::Activation, _: &WireTensor) -> Transmission {
        Transmission::default()
    }
}

/// The channel models on the live stream.
#[derive(Debug)]
pub struct Impaired {
    pub channel: Channel,
}

impl Uplink for Impaired {
    fn set_sharers(&mut self, n: usize) {
        self.channel.set_sharers(n);
    }

    fn transmit(&mut self, activation: &mut pb::Activation, tensor: &WireTensor) -> Transmission {
        if self.channel.config().is_clean() {
            // Only air time: the bytes go through untouched.
            let mut none = Vec::new();
            let mut t = self.channel.transmit(&mut none, tensor.dtype().bits());
            let bits = (tensor.data().len() * 8) as f64;
            t.airtime += Duration::from_secs_f64(self.channel.serialization_s(bits, 10f64.powf(self.channel.config().snr_db / 10.0)));
            return t;
        }
        match self.channel.transmit_wire(tensor) {
            Ok((out, t)) => {
                activation.hidden = Some(out.into());
                activation.erasure_mask = t.erasure_mask.clone().into();
                activation.erased = t.erased.clone().into();
                t
            }
            Err(e) => {
                tracing::warn!(error = %e, "channel could not re-encode the activation; forwarding untouched");
                Transmission::default()
            }
        }
    }
}

/// Decodes and accounts an activation, then lets `link` act on it and records what happened in
/// the shared statistics; returns the delay to apply.
pub fn on_activation(link: &mut dyn Uplink, stats: &mut LinkStats, activation: &mut pb::Activation, shared: &Shared) -> Duration {
    stats.activations += 1;
    let Some(tensor) = activation.hidden.clone() else {
        stats.undecodable += 1;
        return Duration::ZERO;
    };
    stats.bytes += tensor.data.len() as u64;
    match WireTensor::try_from(tensor) {
        Ok(t) => {
            stats.rows += t.shape().get(1).copied().unwrap_or(0) as u64;
            let mut tx = link.transmit(activation, &t);
            tx.elements = t.shape().iter().product();
            stats.add(&tx);
            let fading = shared.snapshot().channel.is_some_and(|c| c.fading_m.is_some());
            shared.record(Record::new(&tx, t.data().len(), fading));
            tx.airtime
        }
        Err(e) => {
            stats.undecodable += 1;
            tracing::debug!(error = %e, "activation does not decode; forwarding untouched");
            Duration::ZERO
        }
    }
}

/// A split change's payload (moved KV entries or replayed boundary states) crosses the uplink like
/// any other tensor: each tensor goes through `link` in turn; returns the total delay.
pub fn on_migrate(link: &mut dyn Uplink, stats: &mut LinkStats, migrate: &mut pb::Migrate, shared: &Shared) -> Duration {
    let mut delay = Duration::ZERO;
    let mut pass = |t: &mut Option<pb::Tensor>| {
        let mut carrier = pb::Activation { hidden: t.take(), ..Default::default() };
        delay += on_activation(link, stats, &mut carrier, shared);
        *t = carrier.hidden;
    };
    for e in &mut migrate.kv {
        pass(&mut e.k);
        pass(&mut e.v);
    }
    pass(&mut migrate.replay);
    delay
}
