//! The emulator's shared state: the current channel (switchable at run time), pause, and the
//! statistics of what the link did, over a sliding window of messages and in total.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use splitinfer_link::channel::{parse_preset, preset};
use splitinfer_link::channel::trace::{Mobility, Trace, TracePoint};
use splitinfer_link::channel::{ChannelConfig, Transmission};
use splitinfer_link::Result;
use splitinfer_proto::v1 as pb;

/// What one relayed activation went through.
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    pub packets: u64,
    pub lost: u64,
    pub retransmissions: u64,
    pub elements: u64,
    pub erased: u64,
    pub bytes: u64,
    pub signal_energy: f64,
    pub noise_energy: f64,
    pub gain_n: u64,
    pub gain_sum: f64,
    pub gain_sq_sum: f64,
    pub delay: Duration,
}

impl Record {
    pub fn new(t: &Transmission, bytes: usize, gains: bool) -> Self {
        Self {
            packets: t.packets as u64,
            lost: t.lost_packets as u64,
            retransmissions: t.retransmissions,
            elements: t.elements as u64,
            erased: t.erased_elements as u64,
            bytes: bytes as u64,
            signal_energy: t.signal_energy,
            noise_energy: t.noise_energy,
            gain_n: if gains { (t.packets - t.lost_packets) as u64 } else { 0 },
            gain_sum: t.gain_sum,
            gain_sq_sum: t.gain_sq_sum,
            delay: t.airtime,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Sums {
    messages: u64,
    r: Record,
    max_delay: Duration,
}

impl Sums {
    fn add(&mut self, r: &Record) {
        self.messages += 1;
        let s = &mut self.r;
        s.packets += r.packets;
        s.lost += r.lost;
        s.retransmissions += r.retransmissions;
        s.elements += r.elements;
        s.erased += r.erased;
        s.bytes += r.bytes;
        s.signal_energy += r.signal_energy;
        s.noise_energy += r.noise_energy;
        s.gain_n += r.gain_n;
        s.gain_sum += r.gain_sum;
        s.gain_sq_sum += r.gain_sq_sum;
        s.delay += r.delay;
        self.max_delay = self.max_delay.max(r.delay);
    }

    fn to_proto(&self) -> pb::LinkWindow {
        let s = &self.r;
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let mean_gain = ratio(s.gain_sum, s.gain_n as f64);
        let var_gain = ratio(s.gain_sq_sum, s.gain_n as f64) - mean_gain * mean_gain;
        pb::LinkWindow {
            messages: self.messages,
            packets: s.packets,
            lost_packets: s.lost,
            retransmissions: s.retransmissions,
            elements: s.elements,
            erased_elements: s.erased,
            bytes: s.bytes,
            realized_snr_db: if s.noise_energy > 0.0 { 10.0 * (s.signal_energy / s.noise_energy).log10() } else { f64::NAN },
            mean_gain,
            m_hat: if var_gain > 0.0 { mean_gain * mean_gain / var_gain } else { f64::NAN },
            loss_rate: ratio(s.lost as f64, s.packets as f64),
            erasure_rate: ratio(s.erased as f64, s.elements as f64),
            mean_delay_ms: ratio(s.delay.as_secs_f64() * 1e3, self.messages as f64),
            max_delay_ms: self.max_delay.as_secs_f64() * 1e3,
        }
    }
}

struct State {
    /// The channel the flags described (`static`).
    base: ChannelConfig,
    /// The channel sessions use; `None` is the pure pass-through.
    current: Option<ChannelConfig>,
    scenario: String,
    paused: bool,
    version: u64,
    window: VecDeque<Record>,
    total: Sums,
}

pub struct Shared {
    state: Mutex<State>,
    window_messages: usize,
    /// The running trace replay, if any; a new replay or a preset change stops it.
    replay: Mutex<Option<tokio_util::sync::CancellationToken>>,
    /// The proxy's own latency per message, for the metrics endpoint.
    pub relay: RelayMetrics,
}

/// The channel a session should use now.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub version: u64,
    pub channel: Option<ChannelConfig>,
    pub paused: bool,
}

impl Shared {
    pub fn new(base: ChannelConfig, impaired: bool, preset_name: &str, window_messages: usize) -> Self {
        Self {
            state: Mutex::new(State {
                current: impaired.then(|| base.clone()),
                base,
                scenario: preset_name.to_string(),
                paused: false,
                version: 0,
                window: VecDeque::new(),
                total: Sums::default(),
            }),
            window_messages: window_messages.max(1),
            replay: Mutex::new(None),
            relay: RelayMetrics::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain counters behind; keep serving them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        Snapshot { version: s.version, channel: s.current.clone(), paused: s.paused }
    }

    pub fn record(&self, r: Record) {
        let mut s = self.lock();
        s.total.add(&r);
        s.window.push_back(r);
        while s.window.len() > self.window_messages {
            s.window.pop_front();
        }
    }

    pub fn stats(&self) -> pb::ChannelStats {
        let s = self.lock();
        let mut window = Sums::default();
        s.window.iter().for_each(|r| window.add(r));
        pb::ChannelStats {
            unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            scenario: s.scenario.clone(),
            impaired: s.current.is_some(),
            paused: s.paused,
            snr_db: s.current.as_ref().map_or(f64::NAN, |c| c.snr_db),
            fading_m: s.current.as_ref().and_then(|c| c.fading_m).unwrap_or(0.0),
            window: Some(window.to_proto()),
            total: Some(s.total.to_proto()),
            window_messages: self.window_messages as u32,
            channel_version: s.version,
        }
    }

    /// Sets the mean SNR and m of the current channel from a trace point.
    pub fn apply_point(&self, scenario: &str, p: &TracePoint) {
        let mut s = self.lock();
        let mut next = s.current.clone().unwrap_or_else(|| s.base.clone());
        next.snr_db = p.snr_db;
        next.fading_m = p.m;
        s.current = Some(next);
        s.scenario = scenario.to_string();
        s.version += 1;
    }

    /// Stops the running replay, if any.
    pub fn stop_replay(&self) {
        if let Some(t) = self.replay.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.cancel();
        }
    }

    /// Applies a control request; nothing changes if any part of it is invalid.
    pub fn set(&self, req: &pb::SetChannelRequest) -> Result<()> {
        let mut s = self.lock();
        let mut next = s.current.clone().unwrap_or_else(|| s.base.clone());
        let mut scenario = s.scenario.clone();
        if !req.preset.is_empty() {
            let p = parse_preset(&req.preset)?;
            next = preset(p, &s.base);
            scenario = p.name().to_string();
        }
        let custom = req.snr_db.is_some() || req.fading_m.is_some() || req.erasure_p.is_some() || req.noise.is_some();
        if let Some(v) = req.snr_db {
            next.snr_db = v;
        }
        if let Some(m) = req.fading_m {
            next.fading_m = (m != 0.0).then_some(m);
        }
        if let Some(p) = req.erasure_p {
            next.erasure_p = (p != 0.0).then_some(p);
        }
        if let Some(n) = req.noise {
            next.noise = n;
        }
        next.validate()?;
        if custom {
            scenario = format!("{scenario}+custom");
        }
        // Valid: from here on, the request takes effect. A preset ends a running replay.
        if !req.preset.is_empty() {
            self.stop_replay();
        }
        if let Some(p) = req.paused {
            s.paused = p;
        }
        if !req.preset.is_empty() || custom {
            s.current = Some(next);
            s.scenario = scenario;
        }
        s.version += 1;
        Ok(())
    }
}

/// Scenario A: starts on the good preset at once (before the emulator serves anything), then
/// switches between bad and good every `period` until shutdown.
pub fn start_alternating(shared: std::sync::Arc<Shared>, period: Duration, shutdown: tokio_util::sync::CancellationToken) -> Result<()> {
    let set = |shared: &Shared, preset: &str| shared.set(&pb::SetChannelRequest { preset: preset.into(), ..Default::default() });
    set(&shared, "good")?;
    tokio::spawn(async move {
        for preset in ["bad", "good"].iter().cycle() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            if let Err(e) = set(&shared, preset) {
                tracing::error!(error = %e, "alternating scenario stopped");
                return;
            }
            tracing::info!(scenario = preset, "alternating channel");
        }
    });
    Ok(())
}

/// The trace a control request or the flags name, with its scenario name.
pub fn trace_for(path: Option<&std::path::Path>, mobility: Option<&str>, seed: u64) -> Result<Option<(String, Trace)>> {
    match (path, mobility) {
        (Some(_), Some(_)) => Err(splitinfer_link::Error::InvalidArgument("give a trace or a mobility scenario, not both".into())),
        (Some(p), None) => Ok(Some((format!("trace {}", p.display()), Trace::load(p)?))),
        (None, Some(m)) => {
            let model = match m {
                "pedestrian" => Mobility::PEDESTRIAN,
                "vehicular" => Mobility::VEHICULAR,
                other => return Err(splitinfer_link::Error::InvalidArgument(format!("unknown mobility {other:?}; known: pedestrian, vehicular"))),
            };
            // One hour at 100 ms steps; replay loops after it.
            Ok(Some((format!("mobility-{m}"), model.trace(3_600_000, 100, seed))))
        }
        (None, None) => Ok(None),
    }
}

/// Replays `trace` from now: its first point at once, then each as its time comes, until
/// another replay, a preset change or shutdown stops it.
pub fn start_replay(shared: std::sync::Arc<Shared>, name: String, trace: Trace, shutdown: &tokio_util::sync::CancellationToken) {
    shared.stop_replay();
    let token = shutdown.child_token();
    *shared.replay.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
    let mut last = trace.at(0);
    shared.apply_point(&name, &last);
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let p = trace.at(start.elapsed().as_millis() as u64);
            if p != last {
                shared.apply_point(&name, &p);
                last = p;
            }
        }
    });
}

/// Prometheus text exposition of the current statistics.
pub fn prometheus(stats: &pb::ChannelStats, relay: &RelayMetrics) -> String {
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    let mut r = prometheus_client::registry::Registry::with_prefix("splitinfer_emulator");
    let t = stats.total.unwrap_or_default();
    let w = stats.window.unwrap_or_default();
    let counters = [
        ("messages", "Activations relayed UE to edge.", t.messages),
        ("packets", "Packets the activations were cut into.", t.packets),
        ("lost_packets", "Packets lost after all retransmissions (zero-filled).", t.lost_packets),
        ("retransmissions", "Packet retransmissions.", t.retransmissions),
        ("erased_elements", "Tensor elements zeroed (lost packets and element erasure).", t.erased_elements),
        ("bytes", "Tensor bytes relayed UE to edge.", t.bytes),
    ];
    for (name, help, v) in counters {
        r.register(name, help, ConstCounter::new(v));
    }
    let gauges = [
        ("window_realized_snr_db", "Realized SNR of the analog noise over the window.", w.realized_snr_db),
        ("window_m_hat", "Estimated Nakagami m of the power gains over the window.", w.m_hat),
        ("window_loss_rate", "Packet loss rate over the window.", w.loss_rate),
        ("window_erasure_rate", "Element erasure rate over the window.", w.erasure_rate),
        ("window_mean_delay_ms", "Mean air time plus propagation per message over the window.", w.mean_delay_ms),
        ("channel_snr_db", "Configured mean SNR.", stats.snr_db),
        ("channel_version", "Channel changes through the control API.", stats.channel_version as f64),
        ("paused", "1 while impairments are paused.", f64::from(u8::from(stats.paused))),
    ];
    for (name, help, v) in gauges {
        r.register(name, help, ConstGauge::new(v));
    }
    relay.register(&mut r);
    splitinfer_telemetry::metrics::text(&r)
}

/// What the proxy itself adds to each message, apart from the emulated air time it holds it for.
#[derive(Clone)]
pub struct RelayMetrics {
    /// Decode, channel models and re-encode of one UE message, by kind.
    pub processing_seconds: splitinfer_telemetry::metrics::Histograms,
    /// Emulated air time (uplink) and delay (downlink) held, by direction.
    pub held_seconds: splitinfer_telemetry::metrics::Histograms,
}

impl RelayMetrics {
    pub fn new() -> Self {
        Self {
            processing_seconds: splitinfer_telemetry::metrics::latency_histograms(),
            held_seconds: splitinfer_telemetry::metrics::latency_histograms(),
        }
    }

    fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register("processing_seconds", "Time the proxy spent on a UE message (decode, channel models, re-encode), by kind.", self.processing_seconds.clone());
        r.register("held_seconds", "Emulated delay a message was held for, by direction.", self.held_seconds.clone());
    }

    pub fn processed(&self, kind: &str, d: std::time::Duration) {
        self.processing_seconds.get_or_create(&vec![("kind", kind.to_string())]).observe(d.as_secs_f64());
    }

    pub fn held(&self, direction: &str, d: std::time::Duration) {
        self.held_seconds.get_or_create(&vec![("direction", direction.to_string())]).observe(d.as_secs_f64());
    }
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

