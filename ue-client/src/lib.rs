//! The UE of splitinfer.
//!
//! - [`config`]: flags and `UE_*` environment variables.
//! - [`generate`]: one generation session over a gRPC stream: prefill and then one step per
//!   token through layers `0..k` here (on a blocking thread, off the async runtime), the hidden
//!   state to the edge, token ids back; per-token timings and bytes.
//! - [`report`]: the per-token timing breakdown and its summary; [`metrics`]: the same as
//!   Prometheus histograms on `--metrics-listen`.

pub mod config;
pub mod metrics;
pub mod report;
pub mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use split_core::bundle::LoadedModel;
use split_core::migrate::{self, BoundaryLog, CostModel, Method, MigrationMode, MigrationShape};
use split_core::model::{KvCache, LayerKv};
use split_core::sampling::SamplingConfig;
use split_core::split::{Epoch, Split, SplitPoint};
use split_core::calibration::Calibration;
use split_core::transform::{Concealment, LinkSetup, Normalization};
use split_core::wire::{CandleWire, WireDType, WireTensor};
use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::edge_client::EdgeClient;
use tonic::transport::Channel;

pub use config::UeConfig;
pub use report::{GenerationReport, MigrationEvent, TokenEvent};
pub use session::{Endpoints, Recovery};
use session::{Conn, History, Recovered};

#[derive(Debug, thiserror::Error)]
pub enum UeError {
    #[error("cannot connect to the edge at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the edge ended the session: {}: {}", .0.code(), .0.message())]
    Edge(tonic::Status),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The link broke (reset, closed without a status, no reply in time); recoverable.
    #[error("link broken: {0}")]
    Link(String),
    /// The link broke and did not come back in time.
    #[error("UNAVAILABLE: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Model(#[from] split_core::Error),
}

impl UeError {
    /// The gRPC status the edge (or emulator) ended the session with, if that is what happened.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::Edge(s) => Some(s),
            _ => None,
        }
    }

    /// The gRPC code that describes the failure: the edge's, `UNAVAILABLE` for a link that broke
    /// (and stayed down), `None` for the UE's own errors.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Edge(s) => Some(s.code()),
            Self::Link(_) | Self::Unavailable(_) | Self::Connect { .. } => Some(tonic::Code::Unavailable),
            _ => None,
        }
    }
}

/// What to generate and how.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub split: SplitPoint,
    pub wire: WireDType,
    pub max_new_tokens: usize,
    /// Go on past end-of-sequence tokens until `max_new_tokens`, for runs of a fixed length.
    pub ignore_eos: bool,
    pub sampling: SamplingConfig,
    /// Rows per prefill message; 0 sends the prompt in one message.
    pub prefill_chunk: usize,
    pub client: String,
    /// How caches move on a split change: the cheaper by the cost model, or one way always.
    pub migration: MigrationMode,
    /// Link rate the cost model assumes for moving caches (Mbit/s).
    pub link_mbps: f64,
    /// How many times faster the edge runs a layer than the UE, for the cost model.
    pub edge_speedup: f64,
    /// The transmitter's normalization and the concealment asked of the edge (the codec is
    /// `wire`), and the calibration statistics they need.
    pub normalization: Normalization,
    pub concealment: Concealment,
    pub calibration: Option<Arc<Calibration>>,
}

impl GenerateRequest {
    fn link(&self) -> LinkSetup {
        LinkSetup { dtype: self.wire, normalization: self.normalization, concealment: self.concealment }
    }
}

/// Connects to an edge (or emulator) in plaintext with raised message limits.
pub async fn connect(url: &str, max_message_bytes: usize, timeout: Duration) -> Result<EdgeClient<Channel>, UeError> {
    connect_tls(url, &splitinfer_telemetry::Tls::default(), max_message_bytes, timeout).await
}

/// [`connect`] dialing with `tls`.
pub async fn connect_tls(url: &str, tls: &splitinfer_telemetry::Tls, max_message_bytes: usize, timeout: Duration) -> Result<EdgeClient<Channel>, UeError> {
    let err = |reason: String| UeError::Connect { url: url.to_string(), reason };
    let channel = tls
        .endpoint(url)
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        // A frozen or vanished peer is found in seconds, even while waiting for a long step.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| err(format!("{e} ({})", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default())))?;
    Ok(EdgeClient::new(channel).max_decoding_message_size(max_message_bytes).max_encoding_message_size(max_message_bytes))
}

/// Where split decisions come from during a generation: the agent, a test's schedule, or nothing.
pub trait SplitSource: Send + Sync {
    /// The decision in force now, if any. Checked at every token boundary.
    fn latest(&self) -> Option<Split>;
    /// The UE applied `decision`: its caches moved and the edge confirmed.
    fn applied(&self, _decision: Split) {}
    /// Whether decisions can come at all; without them the UE keeps no log for recomputes.
    fn adaptive(&self) -> bool {
        true
    }
}

/// No decisions: the split of the request holds throughout.
pub struct FixedSplit;

impl SplitSource for FixedSplit {
    fn latest(&self) -> Option<Split> {
        None
    }

    fn adaptive(&self) -> bool {
        false
    }
}

impl SplitSource for tokio::sync::watch::Receiver<Option<Split>> {
    fn latest(&self) -> Option<Split> {
        *self.borrow()
    }
}

impl SplitSource for agent::follow::Follower {
    fn latest(&self) -> Option<Split> {
        self.decisions().borrow().as_ref().and_then(|d| d.split).map(Split::from)
    }

    fn applied(&self, d: Split) {
        self.ack(d.epoch.get(), d.k as u32);
    }
}

/// The UE's side of the model: layers `0..k`, their caches, and (when the split may move and a
/// recompute may be chosen) the boundary hidden states a recompute replays.
struct UeModel {
    model: Arc<LoadedModel>,
    cache: KvCache,
    log: Option<BoundaryLog>,
    /// Row count of every step so far.
    chunks: Vec<usize>,
}

impl UeModel {
    /// Embeds `tokens`, runs the UE's layers, normalizes and encodes the result for the wire.
    fn step(&mut self, tokens: &[u32], link: LinkSetup, calibration: Option<&Calibration>) -> split_core::Result<WireTensor> {
        let m = &self.model.model;
        let position = self.cache.position();
        let x = m.embed(tokens)?;
        self.chunks.push(tokens.len());
        let h = match self.log.as_mut() {
            Some(log) => {
                let mut trace = vec![x.clone()];
                let h = m.run_layers_traced(&x, &mut self.cache, &mut trace)?;
                log.push(tokens.len(), trace)?;
                h
            }
            None => m.run_layers(&x, &mut self.cache)?,
        };
        let stats = match calibration {
            Some(c) if link.needs_calibration() => Some(c.boundary(self.cache.range().end)?),
            _ => None,
        };
        let values = h.flatten_all()?.to_vec1::<f32>()?;
        Ok(link.encode(h.dims().to_vec(), &values, stats, position)?)
    }
}

/// Runs `f` on the UE's state on a blocking thread (model work stays off the async runtime),
/// handing the state there and back.
async fn on_model<T: Send + 'static>(
    state: UeModel,
    f: impl FnOnce(&mut UeModel) -> split_core::Result<T> + Send + 'static,
) -> Result<(UeModel, T, Duration), UeError> {
    tokio::task::spawn_blocking(move || {
        let mut state = state;
        let t = Instant::now();
        let r = f(&mut state);
        (state, r, t.elapsed())
    })
    .await
    .map_err(|e| UeError::Protocol(format!("UE model task failed: {e}")))
    .and_then(|(s, r, d)| Ok((s, r?, d)))
}

/// The activation message of one step.
fn activation(position: u64, split: Split, hidden: WireTensor, took: Duration) -> pb::UeMessage {
    pb::UeMessage {
        kind: Some(pb::ue_message::Kind::Activation(pb::Activation {
            position,
            split: Some(split.into()),
            hidden: Some(hidden.into()),
            ue_compute_us: took.as_micros() as u64,
            erasure_mask: Default::default(),
            uplink_delay_us: 0,
            erased: Default::default(),
        })),
    }
}

/// One generation session over `client` at the request's fixed split.
pub async fn generate(
    client: &mut EdgeClient<Channel>,
    model: Arc<LoadedModel>,
    req: GenerateRequest,
    on_token: impl FnMut(&TokenEvent),
) -> Result<GenerationReport, UeError> {
    generate_adaptive(client, model, req, &FixedSplit, on_token).await
}

/// One generation session over `client` that follows `source`: at every token boundary a newer
/// decision moves the split (see [`split_core::migrate`]); `on_token` sees every token as it
/// arrives. A broken link ends it: [`generate_resilient`] survives one.
pub async fn generate_adaptive(
    client: &mut EdgeClient<Channel>,
    model: Arc<LoadedModel>,
    req: GenerateRequest,
    source: &dyn SplitSource,
    on_token: impl FnMut(&TokenEvent),
) -> Result<GenerationReport, UeError> {
    run(Conn::new(client.clone(), None, Recovery::NONE), model, req, source, on_token).await
}

/// [`generate_adaptive`] through `endpoints`, resuming or replaying the session when its link
/// breaks (see [`session`]).
pub async fn generate_resilient(
    endpoints: &Endpoints,
    recovery: Recovery,
    model: Arc<LoadedModel>,
    req: GenerateRequest,
    source: &dyn SplitSource,
    on_token: impl FnMut(&TokenEvent),
) -> Result<GenerationReport, UeError> {
    let url = endpoints.urls.first().ok_or_else(|| UeError::Protocol("no edge URL given".into()))?;
    let client = connect_tls(url, &endpoints.tls, endpoints.max_message_bytes, endpoints.connect_timeout).await?;
    run(Conn::new(client, Some(endpoints), recovery), model, req, source, on_token).await
}

/// A replay into a fresh session, again into another one whenever the link breaks on the way.
async fn replay_all(
    conn: &mut Conn<'_>,
    model: &Arc<LoadedModel>,
    req: &GenerateRequest,
    split: Split,
    history: &History,
    generated: &[u32],
    keep_log: bool,
) -> Result<(UeModel, Option<pb::Token>), UeError> {
    let started = Instant::now();
    let out = loop {
        match session::replay(conn, model, req, split, history, generated, keep_log).await {
            Err(e) if session::broken(&e) => {
                if let Err(e) = conn.recover(model, req, split, e, true).await {
                    break Err(e);
                }
            }
            r => break r,
        }
    };
    conn.replay_time += started.elapsed();
    out
}

async fn run(
    mut conn: Conn<'_>,
    model: Arc<LoadedModel>,
    req: GenerateRequest,
    source: &dyn SplitSource,
    mut on_token: impl FnMut(&TokenEvent),
) -> Result<GenerationReport, UeError> {
    if req.prompt.is_empty() {
        return Err(UeError::Protocol("the prompt has no tokens".into()));
    }
    if req.link().needs_calibration() && req.calibration.is_none() {
        return Err(UeError::Protocol(format!(
            "normalization {} / concealment {} need calibration statistics (--calibration FILE)",
            req.normalization, req.concealment
        )));
    }
    let started = Instant::now();
    let n_layers = model.model.n_layers();
    // A decision already in force picks the first split; the request's is the fallback.
    let mut split = Split { k: req.split.k(), epoch: Epoch::ZERO };
    if let Some(d) = source.latest().filter(|d| d.k <= n_layers) {
        split = d;
    }
    conn.open(&model, &req, split, false).await?;
    tracing::info!(session = %conn.id, split = split.k, epoch = %split.epoch, "session open");
    if split.epoch > Epoch::ZERO {
        source.applied(split);
    }

    // Only a recompute reads the log; at a fixed split or with transfer forced it would be dead
    // weight (69 KB per position at k = 30 for SmolLM2-135M).
    let keep_log = source.adaptive() && req.migration != MigrationMode::Transfer;
    let mut state = UeModel { model: model.clone(), cache: KvCache::new(0..split.k), log: keep_log.then(BoundaryLog::new), chunks: Vec::new() };
    let mut cost = CostModel::new(req.link_mbps, req.edge_speedup);
    let shape = MigrationShape::new(&model.model, req.wire.for_caches().size());
    let mut tokens: Vec<TokenEvent> = Vec::with_capacity(req.max_new_tokens);
    let mut generated: Vec<u32> = Vec::with_capacity(req.max_new_tokens);
    let mut history = History { inputs: Vec::with_capacity(req.prompt.len() + req.max_new_tokens), chunks: Vec::new() };
    let mut migrations: Vec<MigrationEvent> = Vec::new();
    let mut input: Vec<u32> = req.prompt.clone();
    let chunk = if req.prefill_chunk == 0 { usize::MAX } else { req.prefill_chunk };
    let mut stop_eos = false;
    while tokens.len() < req.max_new_tokens {
        // A token boundary: the edge has answered every step so far.
        if let Some(d) = source.latest().filter(|d| d.supersedes(split)) {
            if d.k > n_layers {
                tracing::warn!(k = d.k, epoch = %d.epoch, n_layers, "ignoring a split decision outside 0..=L");
            } else if d.k == split.k {
                split = d;
                source.applied(d);
            } else {
                match migrate(state, &mut conn, &req, &cost, &shape, split, d, tokens.len()).await {
                    Ok((s, event)) => {
                        state = s;
                        migrations.push(event);
                        split = d;
                        source.applied(d);
                    }
                    Err(e) if session::broken(&e) => {
                        // The caches were mid-move: rebuild at the old split in a new session;
                        // the decision is taken up again at this boundary.
                        conn.recover(&model, &req, split, e, true).await?;
                        state = replay_all(&mut conn, &model, &req, split, &history, &generated, keep_log).await?.0;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // Prefill goes out in chunks; each decode step is one row.
        let mut ue_compute = Duration::ZERO;
        let mut pending: Vec<(u64, pb::UeMessage)> = Vec::new();
        for rows in input.chunks(chunk) {
            let position = state.cache.position() as u64;
            let (tokens_in, link, calibration) = (rows.to_vec(), req.link(), req.calibration.clone());
            let (s, hidden, took) = on_model(state, move |m| m.step(&tokens_in, link, calibration.as_deref())).await?;
            state = s;
            ue_compute += took;
            // With few layers the step's fixed costs (embedding, encoding) would pass for layer time.
            if split.k >= 4 {
                cost.observe(rows.len(), split.k, took.as_secs_f64());
            }
            history.inputs.extend_from_slice(rows);
            history.chunks.push(rows.len());
            pending.push((position, activation(position, split, hidden, took)));
        }
        let end = state.cache.position() as u64;
        let mut step_bytes = 0u64;
        let mut sent_at = Instant::now();
        let t = loop {
            let exchanged = async {
                for (_, msg) in &pending {
                    sent_at = Instant::now();
                    step_bytes += conn.send(msg.clone()).await?;
                }
                match conn.recv().await? {
                    pb::edge_message::Kind::Token(t) => Ok(t),
                    other => Err(UeError::Protocol(format!("expected a token, got {other:?}"))),
                }
            }
            .await;
            match exchanged {
                Ok(t) => break t,
                Err(e) if session::broken(&e) => match conn.recover(&model, &req, split, e, false).await? {
                    Recovered::Resumed { position, last_token } => {
                        if position == end {
                            // The edge completed the step; its token was lost with the link.
                            match last_token.filter(|t| t.position == end) {
                                Some(t) => break t,
                                None => return Err(UeError::Protocol(format!("resumed at position {end} without the token of that step"))),
                            }
                        }
                        // Resend what the edge did not get.
                        let Some(i) = pending.iter().position(|(p, _)| *p == position) else {
                            return Err(UeError::Protocol(format!(
                                "resumed at position {position}, which is no boundary of the step the UE is in ({:?}..{end})",
                                pending.first().map(|p| p.0)
                            )));
                        };
                        pending.drain(..i);
                    }
                    Recovered::Fresh => {
                        let (s, t) = replay_all(&mut conn, &model, &req, split, &history, &generated, keep_log).await?;
                        state = s;
                        match t {
                            Some(t) => break t,
                            None => return Err(UeError::Protocol("the replay produced no token for the step in flight".into())),
                        }
                    }
                },
                Err(e) => return Err(e),
            }
        };
        let rtt = sent_at.elapsed();
        let edge = Duration::from_micros(t.edge_queue_us + t.edge_compute_us);
        let network_us = rtt.saturating_sub(edge).as_micros() as u64;
        // The emulator reports the air time it held each direction for; the rest of the network
        // time (serialization, TCP, the proxy's own work) cannot be split by one clock, so each
        // direction is given half of it.
        let transport_us = network_us.saturating_sub(t.uplink_delay_us + t.downlink_delay_us);
        let event = TokenEvent {
            id: t.id,
            logprob: t.logprob,
            rows: input.len(),
            k: split.k,
            epoch: split.epoch.get(),
            ue_compute_us: ue_compute.as_micros() as u64,
            network_us,
            uplink_us: t.uplink_delay_us + transport_us / 2,
            downlink_us: t.downlink_delay_us + transport_us - transport_us / 2,
            edge_queue_us: t.edge_queue_us,
            edge_compute_us: t.edge_compute_us,
            edge_batch: t.batch.max(1),
            bytes_up: step_bytes,
            bytes_down: t.encoded_len() as u64,
        };
        on_token(&event);
        tokens.push(event);
        generated.push(t.id);
        if t.eos && !req.ignore_eos {
            stop_eos = true;
            break;
        }
        input = vec![t.id];
    }
    conn.finish().await?;
    Ok(GenerationReport {
        session_id: conn.id.clone(),
        split: req.split.k(),
        final_split: split.k,
        wire: req.wire.to_string(),
        prompt_tokens: req.prompt.len(),
        tokens,
        migrations,
        stopped_at_eos: stop_eos,
        bytes_up: conn.bytes_up,
        bytes_down: conn.bytes_down,
        resumes: conn.resumes,
        replays: conn.replays,
        replay_ms: conn.replay_time.as_secs_f64() * 1e3,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Moves the split from `from` to `to` at a token boundary: plans the method, moves or rebuilds
/// the caches of the layers that change sides, and waits for the edge to confirm.
#[allow(clippy::too_many_arguments)]
async fn migrate(
    state: UeModel,
    conn: &mut Conn<'_>,
    req: &GenerateRequest,
    cost: &CostModel,
    shape: &MigrationShape,
    from: Split,
    to: Split,
    at_token: usize,
) -> Result<(UeModel, MigrationEvent), UeError> {
    let started = Instant::now();
    let position = state.cache.position();
    let plan = match &state.log {
        Some(log) => cost.plan(shape, from.k, to.k, &state.chunks, log.common_height(), req.migration),
        // No log was kept: only a transfer is possible (the estimates are still logged).
        None => cost.plan(shape, from.k, to.k, &state.chunks, 0, MigrationMode::Transfer),
    };
    let method = plan.method;
    tracing::info!(
        from = from.k, to = to.k, epoch = %to.epoch, position, %method,
        transfer_est_ms = plan.transfer_s * 1e3, recompute_est_ms = plan.recompute_s * 1e3,
        transfer_bytes = plan.transfer_bytes, recompute_bytes = plan.recompute_bytes,
        "changing split"
    );
    let mut msg = pb::Migrate {
        from: Some(from.into()),
        to: Some(to.into()),
        position: position as u64,
        method: match method {
            Method::Transfer => pb::Migration::Transfer,
            Method::Recompute => pb::Migration::Recompute,
        } as i32,
        ..Default::default()
    };
    let wire = req.wire.for_caches();
    let (mut state, ue_us) = if to.k < from.k {
        // The edge takes layers to..from: ship their entries, or the states it replays.
        let to_k = to.k;
        let (s, payload, took) = on_model(state, move |m| {
            let moved = m.cache.split_off(to_k)?;
            m.cache.set_empty_position(position);
            match method {
                Method::Transfer => {
                    let kv = moved
                        .entries()
                        .filter_map(|(layer, e)| e.map(|e| (layer, e)))
                        .map(|(layer, e)| {
                            Ok(pb::LayerKv {
                                layer: layer as u32,
                                k: Some(WireTensor::from_tensor(&e.k, wire)?.into()),
                                v: Some(WireTensor::from_tensor(&e.v, wire)?.into()),
                            })
                        })
                        .collect::<split_core::Result<Vec<_>>>()?;
                    Ok((kv, None))
                }
                Method::Recompute => {
                    let model = m.model.clone();
                    let log = m.log.as_mut().ok_or_else(|| split_core::Error::InvalidArgument("recompute without a boundary log".into()))?;
                    if log.common_height() < to_k {
                        // Fill in the boundary the edge needs from lower ones.
                        migrate::recompute(&model.model, log, to_k..to_k)?;
                    }
                    let states = WireTensor::from_tensor(&log.boundary(to_k)?, wire)?;
                    Ok((Vec::new(), Some((states, log.chunks()))))
                }
            }
        })
        .await?;
        msg.kv = payload.0;
        if let Some((states, chunks)) = payload.1 {
            msg.replay = Some(states.into());
            msg.replay_chunks = chunks.into_iter().map(|c| c as u32).collect();
        }
        (s, took.as_micros() as u64)
    } else if method == Method::Recompute {
        // The UE takes layers from..to and rebuilds them from its log.
        let (from_k, to_k) = (from.k, to.k);
        let (s, (), took) = on_model(state, move |m| {
            let model = m.model.clone();
            let log = m.log.as_mut().ok_or_else(|| split_core::Error::InvalidArgument("recompute without a boundary log".into()))?;
            let gained = migrate::recompute(&model.model, log, from_k..to_k)?;
            let own = std::mem::replace(&mut m.cache, KvCache::new(0..0));
            m.cache = own.join(gained)?;
            Ok(())
        })
        .await?;
        (s, took.as_micros() as u64)
    } else {
        (state, 0)
    };
    msg.ue_compute_us = ue_us;
    let bytes_up = conn.send(pb::UeMessage { kind: Some(pb::ue_message::Kind::Migrate(msg)) }).await?;
    let migrated = match conn.recv().await? {
        pb::edge_message::Kind::Migrated(m) => m,
        other => return Err(UeError::Protocol(format!("expected migrated, got {other:?}"))),
    };
    let bytes_down = migrated.encoded_len() as u64;
    if to.k > from.k && method == Method::Transfer {
        // The UE takes layers from..to: adopt the entries the edge sent.
        let (from_k, to_k) = (from.k, to.k);
        let entries = migrated.kv;
        let (s, (), _) = on_model(state, move |m| {
            let (kv_heads, head_dim) = m.model.model.kv_layout();
            let device = m.model.model.device().clone();
            let entries = entries
                .into_iter()
                .map(|e| {
                    let k = WireTensor::try_from(e.k.unwrap_or_default())?.to_tensor(&device)?;
                    let v = WireTensor::try_from(e.v.unwrap_or_default())?.to_tensor(&device)?;
                    Ok(LayerKv { k, v })
                })
                .collect::<split_core::Result<Vec<_>>>()?;
            let gained = KvCache::from_entries(from_k..to_k, entries, position, kv_heads, head_dim)?;
            let own = std::mem::replace(&mut m.cache, KvCache::new(0..0));
            m.cache = own.join(gained)?;
            Ok(())
        })
        .await?;
        state = s;
    }
    if state.cache.range() != (0..to.k) || state.cache.position() != position {
        return Err(UeError::Protocol(format!(
            "after moving the split to {} the UE holds layers {:?} at position {}, expected 0..{} at {position}",
            to.k,
            state.cache.range(),
            state.cache.position(),
            to.k
        )));
    }
    let event = MigrationEvent {
        at_token,
        position,
        from: from.k,
        to: to.k,
        epoch: to.epoch.get(),
        method: method.to_string(),
        transfer_est_ms: plan.transfer_s * 1e3,
        recompute_est_ms: plan.recompute_s * 1e3,
        bytes_up,
        bytes_down,
        ue_compute_us: ue_us,
        edge_compute_us: migrated.edge_compute_us,
        took_ms: started.elapsed().as_secs_f64() * 1e3,
    };
    tracing::info!(
        from = from.k, to = to.k, epoch = %to.epoch, %method, took_ms = event.took_ms,
        bytes_up, bytes_down, "split changed"
    );
    Ok((state, event))
}
