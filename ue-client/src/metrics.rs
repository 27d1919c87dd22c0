//! The UE's Prometheus metrics (served on `--metrics-listen` while it runs): the per-token
//! latency breakdown as histograms (UE compute, uplink, edge queue, edge compute, downlink),
//! tokens, bytes per direction, the split and its epoch, and split changes by method.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use splitinfer_telemetry::metrics::{self, Histograms, latency_histogram, latency_histograms};

use crate::report::{MigrationEvent, TokenEvent};

type Labels = Vec<(&'static str, String)>;

pub struct UeMetrics {
    registry: Registry,
    part_seconds: Histograms,
    tokens: Counter,
    bytes: Family<Labels, Counter>,
    split: Gauge,
    epoch: Gauge,
    split_changes: Family<Labels, Counter>,
    split_change_seconds: Histogram,
}

impl UeMetrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("splitinfer_ue");
        let part_seconds = latency_histograms();
        let tokens = Counter::default();
        let bytes = Family::<Labels, Counter>::default();
        let (split, epoch) = (Gauge::default(), Gauge::default());
        let split_changes = Family::<Labels, Counter>::default();
        let split_change_seconds = latency_histogram();
        registry.register(
            "token_part_seconds",
            "Per-token latency by part: ue_compute, uplink, edge_queue, edge_compute, downlink (phase prefill or decode).",
            part_seconds.clone(),
        );
        registry.register("tokens", "Tokens received.", tokens.clone());
        registry.register("bytes", "Bytes of session messages, by direction.", bytes.clone());
        registry.register("split", "Layers run on the UE now (k).", split.clone());
        registry.register("split_epoch", "Epoch of the split in force.", epoch.clone());
        registry.register("split_changes", "Live split changes, by method.", split_changes.clone());
        registry.register("split_change_seconds", "Time a split change took, end to end.", split_change_seconds.clone());
        Arc::new(Self { registry, part_seconds, tokens, bytes, split, epoch, split_changes, split_change_seconds })
    }

    pub fn text(&self) -> String {
        metrics::text(&self.registry)
    }

    /// Records a token; the first of a generation is the prefill's.
    pub fn token(&self, t: &TokenEvent, prefill: bool) {
        let phase = if prefill { "prefill" } else { "decode" };
        for (part, us) in [
            ("ue_compute", t.ue_compute_us),
            ("uplink", t.uplink_us),
            ("edge_queue", t.edge_queue_us),
            ("edge_compute", t.edge_compute_us),
            ("downlink", t.downlink_us),
        ] {
            let labels = vec![("part", part.to_string()), ("phase", phase.to_string())];
            self.part_seconds.get_or_create(&labels).observe(Duration::from_micros(us).as_secs_f64());
        }
        self.tokens.inc();
        self.bytes.get_or_create(&vec![("direction", "up".to_string())]).inc_by(t.bytes_up);
        self.bytes.get_or_create(&vec![("direction", "down".to_string())]).inc_by(t.bytes_down);
        self.split.set(t.k as i64);
        self.epoch.set(t.epoch as i64);
    }

    pub fn split_change(&self, m: &MigrationEvent) {
        self.split_changes.get_or_create(&vec![("method", m.method.clone())]).inc();
        self.split_change_seconds.observe(m.took_ms / 1e3);
        self.bytes.get_or_create(&vec![("direction", "up".to_string())]).inc_by(m.bytes_up);
        self.bytes.get_or_create(&vec![("direction", "down".to_string())]).inc_by(m.bytes_down);
    }
}
