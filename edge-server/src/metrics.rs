//! The edge's Prometheus metrics (served on `--metrics-listen`): steps and tokens, queue and
//! compute time per step as histograms, bytes per direction, open streams, every session's split
//! and epoch, split changes, decode batch sizes, and errors by gRPC code.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use splitinfer_telemetry::metrics::{self, Histograms, bytes_histogram, latency_histograms};

type Labels = Vec<(&'static str, String)>;

pub struct EdgeMetrics {
    registry: Registry,
    steps: Family<Labels, Counter>,
    tokens: Counter,
    queue_seconds: Histograms,
    compute_seconds: Histograms,
    bytes: Family<Labels, Counter>,
    message_bytes: Family<Labels, Histogram, fn() -> Histogram>,
    streams: Gauge,
    session_split: Family<Labels, Gauge>,
    session_epoch: Family<Labels, Gauge>,
    split_changes: Family<Labels, Counter>,
    batch: Histogram,
    errors: Family<Labels, Counter>,
    agent_epoch: Gauge,
}

fn phase(prefill: bool) -> Labels {
    vec![("phase", if prefill { "prefill" } else { "decode" }.to_string())]
}

impl EdgeMetrics {
    pub fn new() -> Arc<Self> {
        let mut r = Registry::with_prefix("splitinfer_edge");
        let m = Self {
            steps: Family::default(),
            tokens: Counter::default(),
            queue_seconds: latency_histograms(),
            compute_seconds: latency_histograms(),
            bytes: Family::default(),
            message_bytes: Family::new_with_constructor(bytes_histogram),
            streams: Gauge::default(),
            session_split: Family::default(),
            session_epoch: Family::default(),
            split_changes: Family::default(),
            batch: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0]),
            errors: Family::default(),
            agent_epoch: Gauge::default(),
            registry: Registry::default(),
        };
        r.register("steps", "Activations run, by phase (prefill chunk or decode step).", m.steps.clone());
        r.register("tokens", "Tokens sampled and sent.", m.tokens.clone());
        r.register("queue_seconds", "Time a step waited for the model worker.", m.queue_seconds.clone());
        r.register("compute_seconds", "Time the model worker spent on a step (layers k..L, head, sampling).", m.compute_seconds.clone());
        r.register("bytes", "Bytes of messages, by direction (up: from the UE, down: to the UE).", m.bytes.clone());
        r.register("message_bytes", "Size of messages, by direction.", m.message_bytes.clone());
        r.register("streams", "Sessions with an open stream.", m.streams.clone());
        r.register("session_split", "Split k of each session with an open stream.", m.session_split.clone());
        r.register("session_epoch", "Split epoch of each session with an open stream.", m.session_epoch.clone());
        r.register("split_changes", "Live split changes, by method.", m.split_changes.clone());
        r.register("decode_batch", "Sessions whose decode steps ran as one batch.", m.batch.clone());
        r.register("errors", "Sessions ended with an error, by gRPC code.", m.errors.clone());
        r.register("agent_epoch", "Latest split epoch received from the agent (0 without one).", m.agent_epoch.clone());
        Arc::new(Self { registry: r, ..m })
    }

    pub fn text(&self) -> String {
        metrics::text(&self.registry)
    }

    pub fn step(&self, prefill: bool, queue: Duration, compute: Duration, batch: usize) {
        self.steps.get_or_create(&phase(prefill)).inc();
        self.queue_seconds.get_or_create(&phase(prefill)).observe(queue.as_secs_f64());
        self.compute_seconds.get_or_create(&phase(prefill)).observe(compute.as_secs_f64());
        if !prefill {
            self.batch.observe(batch as f64);
        }
    }

    pub fn token(&self) {
        self.tokens.inc();
    }

    pub fn message(&self, up: bool, bytes: usize) {
        let l = vec![("direction", if up { "up" } else { "down" }.to_string())];
        self.bytes.get_or_create(&l).inc_by(bytes as u64);
        self.message_bytes.get_or_create(&l).observe(bytes as f64);
    }

    pub fn session_split(&self, session: &str, split: split_core::split::Split) {
        let l = vec![("session", session.to_string())];
        self.session_split.get_or_create(&l).set(split.k as i64);
        self.session_epoch.get_or_create(&l).set(split.epoch.get() as i64);
    }

    pub fn stream_opened(&self) {
        self.streams.inc();
    }

    pub fn stream_closed(&self, session: Option<&str>) {
        self.streams.dec();
        if let Some(s) = session {
            let l = vec![("session", s.to_string())];
            self.session_split.remove(&l);
            self.session_epoch.remove(&l);
        }
    }

    pub fn split_change(&self, method: &str) {
        self.split_changes.get_or_create(&vec![("method", method.to_string())]).inc();
    }

    pub fn error(&self, code: tonic::Code) {
        self.errors.get_or_create(&vec![("code", format!("{code:?}"))]).inc();
    }

    pub fn agent_epoch(&self, epoch: u64) {
        self.agent_epoch.set(epoch as i64);
    }
}
