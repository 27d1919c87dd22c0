//! The agent's Prometheus metrics (served on `--metrics-listen`), rendered from the same snapshot
//! the status call returns: the split and epoch in force, observations, the latest channel
//! observation, subscribers and what each acknowledged, the statistics link and any pin.

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use splitinfer_proto::v1 as pb;

use crate::state::Shared;

pub fn render(state: &Shared) -> String {
    let s = state.lock().status(1);
    let mut r = Registry::with_prefix("splitinfer_agent");
    let split = s.current.as_ref().and_then(|d| d.split).unwrap_or_default();
    r.register("split", "Split k of the decision in force.", ConstGauge::new(i64::from(split.k)));
    r.register("epoch", "Epoch of the decision in force (decisions so far in this run, re-issues included).", ConstGauge::new(split.epoch as i64));
    r.register("observations", "Channel observations the policy saw.", ConstCounter::new(s.observations));
    r.register("stats_connected", "1 while the emulator's statistics stream is up.", ConstGauge::new(i64::from(s.stats_connected)));
    r.register("pinned", "1 while an override pins k.", ConstGauge::new(i64::from(s.pinned_k.is_some())));
    let obs = s.observation.unwrap_or_default();
    r.register("observation_snr_db", "SNR of the latest observation (+Inf on a clean link).", ConstGauge::new(obs.snr_db));
    r.register("observation_loss_rate", "Packet loss rate of the latest observation.", ConstGauge::new(obs.loss_rate));
    let connected: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
    let acked: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
    for sub in &s.subscribers {
        let role = pb::Role::try_from(sub.role).unwrap_or(pb::Role::Unspecified).as_str_name().trim_start_matches("ROLE_").to_lowercase();
        let labels = vec![("subscriber", sub.name.clone()), ("role", role)];
        connected.get_or_create(&labels).set(i64::from(sub.connected));
        acked.get_or_create(&labels).set(sub.acked_epoch as i64);
    }
    r.register("subscriber_connected", "1 while a subscriber's stream is open.", connected);
    r.register("subscriber_acked_epoch", "Highest epoch each subscriber acknowledged.", acked);
    splitinfer_telemetry::metrics::text(&r)
}
