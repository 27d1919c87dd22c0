//! The UE of splitinfer.
//!
//! - [`config`]: flags and `UE_*` environment variables.
//! - [`generate`]: one generation session over a gRPC stream: prefill and then one step per
//!   token through layers `0..k` here (on a blocking thread, off the async runtime), the hidden
//!   state to the edge, token ids back; per-token timings and bytes.
//! - [`report`]: the per-token timing breakdown and its summary; [`metrics`]: the same as
//!   Prometheus histograms on `--metrics-listen`.
//! - [`progress`]: the generation's rate, latency and text, reported to the agent's dashboard.

pub mod config;
pub mod metrics;
pub mod progress;
pub mod report;
pub mod score;
pub mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use split_core::bundle::LoadedModel;
use split_core::migrate::{self, BoundaryLog, CostModel, Method, MigrationMode, MigrationShape, Side};
use split_core::model::KvCache;
use split_core::protocol::{Migrate, Replay, Step, Token};
use split_core::sampling::SamplingConfig;
use split_core::split::{Epoch, Split, SplitPoint};
use split_core::calibration::Calibration;
use split_core::transform::{Concealment, LinkSetup, Normalization};
use split_core::wire::{CandleWire, WireDType, WireTensor};
use splitinfer_proto::v1::edge_client::EdgeClient;
use tonic::transport::Channel;

pub use config::UeConfig;
pub use report::{GenerationReport, MigrationEvent, TokenEvent};
pub use session::{Endpoints, Recovery};
use session::{Conn, History, Recovered, Reply};

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

/// One generation session as the UE runs it: the link to the edge ([`Conn`]), the UE's own
/// layers ([`UeModel`]), the split in force, and what a replay needs ([`History`]).
/// [`run`] drives it: [`UeSession::open`], then at every token boundary
/// [`UeSession::change_split`] if a newer decision is in force and [`UeSession::step`], then
/// [`UeSession::close`]. A broken link is brought back inside `step` and `change_split`, by a
/// resume or a replay ([`session`]).
struct UeSession<'a> {
    conn: Conn<'a>,
    model: Arc<LoadedModel>,
    req: GenerateRequest,
    split: Split,
    /// Whether the UE keeps the boundary log a recompute reads.
    keep_log: bool,
    /// The UE's layers; `None` only while a step or a split change has them.
    state: Option<UeModel>,
    cost: CostModel,
    shape: MigrationShape,
    history: History,
    tokens: Vec<TokenEvent>,
    generated: Vec<u32>,
    migrations: Vec<MigrationEvent>,
    stopped_at_eos: bool,
    started: Instant,
}

impl<'a> UeSession<'a> {
    /// Opens the session at the decision already in force, else at the request's split.
    async fn open(mut conn: Conn<'a>, model: Arc<LoadedModel>, req: GenerateRequest, source: &dyn SplitSource) -> Result<Self, UeError> {
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
        let split = source.latest().filter(|d| d.k <= n_layers).unwrap_or(Split { k: req.split.k(), epoch: Epoch::ZERO });
        conn.open(&model, &req, split, false).await?;
        tracing::info!(session = %conn.id, split = split.k, epoch = %split.epoch, "session open");
        if split.epoch > Epoch::ZERO {
            source.applied(split);
        }
        // Only a recompute reads the log; at a fixed split or with transfer forced it would be
        // dead weight (69 KB per position at k = 30 for SmolLM2-135M).
        let keep_log = source.adaptive() && req.migration != MigrationMode::Transfer;
        let state = UeModel { model: model.clone(), cache: KvCache::new(0..split.k), log: keep_log.then(BoundaryLog::new), chunks: Vec::new() };
        Ok(Self {
            cost: CostModel::new(req.link_mbps, req.edge_speedup),
            shape: MigrationShape::new(&model.model, req.wire.for_caches().size()),
            tokens: Vec::with_capacity(req.max_new_tokens),
            generated: Vec::with_capacity(req.max_new_tokens),
            history: History { inputs: Vec::with_capacity(req.prompt.len() + req.max_new_tokens), chunks: Vec::new() },
            migrations: Vec::new(),
            state: Some(state),
            conn,
            model,
            req,
            split,
            keep_log,
            stopped_at_eos: false,
            started,
        })
    }

    fn take_state(&mut self) -> Result<UeModel, UeError> {
        self.state.take().ok_or_else(|| UeError::Protocol("the UE's layers were lost in an earlier failure".into()))
    }

    /// Rebuilds everything in a fresh session (opened by the caller), again into another one
    /// whenever the link breaks on the way; returns the token of the step in flight, if any.
    async fn replay(&mut self) -> Result<Option<Token>, UeError> {
        let started = Instant::now();
        let out = loop {
            match session::replay(&mut self.conn, &self.model, &self.req, self.split, &self.history, &self.generated, self.keep_log).await {
                Err(e) if session::broken(&e) => {
                    if let Err(e) = self.conn.recover(&self.model, &self.req, self.split, e, true).await {
                        break Err(e);
                    }
                }
                r => break r,
            }
        };
        self.conn.replay_time += started.elapsed();
        let (state, token) = out?;
        self.state = Some(state);
        Ok(token)
    }

    /// Moves the split to `d` at this token boundary. Returns whether to try again: the link
    /// broke while the caches were moving, so the session was rebuilt at the old split.
    async fn change_split(&mut self, d: Split, source: &dyn SplitSource) -> Result<bool, UeError> {
        let n_layers = self.model.model.n_layers();
        if d.k > n_layers {
            tracing::warn!(k = d.k, epoch = %d.epoch, n_layers, "ignoring a split decision outside 0..=L");
            return Ok(false);
        }
        if d.k == self.split.k {
            self.split = d;
            source.applied(d);
            return Ok(false);
        }
        let state = self.take_state()?;
        match self.migrate(state, d).await {
            Ok((state, event)) => {
                self.state = Some(state);
                self.migrations.push(event);
                self.split = d;
                source.applied(d);
                Ok(false)
            }
            Err(e) if session::broken(&e) => {
                self.conn.recover(&self.model, &self.req, self.split, e, true).await?;
                self.replay().await?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// One step: `input` (the prompt, in chunks, or the last token) through the UE's layers
    /// and to the edge, and the token back. A broken link on the way is resumed (what the edge
    /// did not get is resent) or replayed into a new session.
    async fn step(&mut self, input: &[u32]) -> Result<&TokenEvent, UeError> {
        let chunk = if self.req.prefill_chunk == 0 { usize::MAX } else { self.req.prefill_chunk };
        let mut ue_compute = Duration::ZERO;
        let mut pending: Vec<Step> = Vec::new();
        for rows in input.chunks(chunk) {
            let state = self.take_state()?;
            let position = state.cache.position();
            let (tokens_in, link, calibration) = (rows.to_vec(), self.req.link(), self.req.calibration.clone());
            let (state, hidden, took) = on_model(state, move |m| m.step(&tokens_in, link, calibration.as_deref())).await?;
            self.state = Some(state);
            ue_compute += took;
            // With few layers the step's fixed costs (embedding, encoding) would pass for layer time.
            if self.split.k >= 4 {
                self.cost.observe(rows.len(), self.split.k, took.as_secs_f64());
            }
            self.history.inputs.extend_from_slice(rows);
            self.history.chunks.push(rows.len());
            pending.push(Step::generate(position, self.split, hidden, took));
        }
        let end = self.state.as_ref().map_or(0, |s| s.cache.position());
        let mut step_bytes = 0u64;
        let mut sent_at = Instant::now();
        let mut down_before = self.conn.bytes_down;
        let t = loop {
            let conn = &mut self.conn;
            let exchanged = async {
                for step in &pending {
                    sent_at = Instant::now();
                    step_bytes += conn.send(step.clone()).await?;
                }
                down_before = conn.bytes_down;
                match conn.recv().await? {
                    Reply::Token(t) => Ok(t),
                    other => Err(UeError::Protocol(format!("expected a token, got {other:?}"))),
                }
            }
            .await;
            match exchanged {
                Ok(t) => break t,
                Err(e) if session::broken(&e) => match self.conn.recover(&self.model, &self.req, self.split, e, false).await? {
                    Recovered::Resumed { position, last_token } => {
                        if position == end {
                            // The edge completed the step; its token was lost with the link.
                            match last_token.filter(|t| t.position == end) {
                                Some(t) => break t,
                                None => return Err(UeError::Protocol(format!("resumed at position {end} without the token of that step"))),
                            }
                        }
                        // Resend what the edge did not get.
                        let Some(i) = pending.iter().position(|s| s.position == position) else {
                            return Err(UeError::Protocol(format!(
                                "resumed at position {position}, which is no boundary of the step the UE is in ({:?}..{end})",
                                pending.first().map(|s| s.position)
                            )));
                        };
                        pending.drain(..i);
                    }
                    Recovered::Fresh => match self.replay().await? {
                        Some(t) => break t,
                        None => return Err(UeError::Protocol("the replay produced no token for the step in flight".into())),
                    },
                },
                Err(e) => return Err(e),
            }
        };
        let rtt = sent_at.elapsed();
        let network_us = rtt.saturating_sub(t.edge_queue + t.edge_compute).as_micros() as u64;
        // The emulator reports the air time it held each direction for; the rest of the network
        // time (serialization, TCP, the proxy's own work) cannot be split by one clock, so each
        // direction is given half of it.
        let (uplink_delay_us, downlink_delay_us) = (t.uplink_delay.as_micros() as u64, t.downlink_delay.as_micros() as u64);
        let transport_us = network_us.saturating_sub(uplink_delay_us + downlink_delay_us);
        self.tokens.push(TokenEvent {
            id: t.id,
            logprob: t.logprob,
            rows: input.len(),
            k: self.split.k,
            epoch: self.split.epoch.get(),
            ue_compute_us: ue_compute.as_micros() as u64,
            network_us,
            uplink_us: uplink_delay_us + transport_us / 2,
            downlink_us: downlink_delay_us + transport_us - transport_us / 2,
            edge_queue_us: t.edge_queue.as_micros() as u64,
            edge_compute_us: t.edge_compute.as_micros() as u64,
            edge_batch: t.batch as u32,
            bytes_up: step_bytes,
            bytes_down: self.conn.bytes_down - down_before,
        });
        self.generated.push(t.id);
        self.stopped_at_eos = t.eos && !self.req.ignore_eos;
        Ok(self.tokens.last().expect("just pushed"))
    }

    /// Ends the stream (waiting for the edge's status, so a late error is not lost) and reports.
    async fn close(mut self) -> Result<GenerationReport, UeError> {
        self.conn.finish().await?;
        Ok(GenerationReport {
            session_id: self.conn.id.clone(),
            split: self.req.split.k(),
            final_split: self.split.k,
            wire: self.req.wire.to_string(),
            prompt_tokens: self.req.prompt.len(),
            tokens: self.tokens,
            migrations: self.migrations,
            stopped_at_eos: self.stopped_at_eos,
            bytes_up: self.conn.bytes_up,
            bytes_down: self.conn.bytes_down,
            resumes: self.conn.resumes,
            replays: self.conn.replays,
            replay_ms: self.conn.replay_time.as_secs_f64() * 1e3,
            elapsed_ms: self.started.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// A generation: prefill, then a token at a time, following `source` at every token boundary.
async fn run(
    conn: Conn<'_>,
    model: Arc<LoadedModel>,
    req: GenerateRequest,
    source: &dyn SplitSource,
    mut on_token: impl FnMut(&TokenEvent),
) -> Result<GenerationReport, UeError> {
    let (max_new_tokens, mut input) = (req.max_new_tokens, req.prompt.clone());
    let mut session = UeSession::open(conn, model, req, source).await?;
    while session.tokens.len() < max_new_tokens {
        // A token boundary: the edge has answered every step so far.
        while let Some(d) = source.latest().filter(|d| d.supersedes(session.split)) {
            if !session.change_split(d, source).await? {
                break;
            }
        }
        let t = session.step(&input).await?;
        on_token(t);
        input = vec![t.id];
        if session.stopped_at_eos {
            break;
        }
    }
    session.close().await
}

impl UeSession<'_> {
    /// Moves the split from the one in force to `to` at a token boundary: plans the method, moves
    /// or rebuilds the caches of the layers that change sides (through the same
    /// `split_core::migrate` functions the edge uses), and waits for the edge to confirm.
    async fn migrate(&mut self, state: UeModel, to: Split) -> Result<(UeModel, MigrationEvent), UeError> {
        let (from, at_token) = (self.split, self.tokens.len());
        let (conn, req, cost, shape) = (&mut self.conn, &self.req, &self.cost, &self.shape);
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
        let mut change = Migrate { from, to, position, method, kv: Vec::new(), replay: None, ue_compute: Duration::ZERO };
        let wire = req.wire.for_caches();
        let mut state = if to.k < from.k {
            // The edge takes layers to..from: ship their entries, or the states it replays.
            let to_k = to.k;
            let (s, (kv, replay), took) = on_model(state, move |m| {
                let moved = migrate::give(Side::Ue, &mut m.cache, to_k)?;
                match method {
                    Method::Transfer => Ok((migrate::to_wire(&moved, wire)?, None)),
                    Method::Recompute => {
                        let model = m.model.clone();
                        let log = m.log.as_mut().ok_or_else(|| split_core::Error::InvalidArgument("recompute without a boundary log".into()))?;
                        if log.common_height() < to_k {
                            // Fill in the boundary the edge needs from lower ones.
                            migrate::recompute(&model.model, log, to_k..to_k)?;
                        }
                        let states = WireTensor::from_tensor(&log.boundary(to_k)?, wire)?;
                        Ok((Vec::new(), Some(Replay { states, chunks: log.chunks() })))
                    }
                }
            })
            .await?;
            (change.kv, change.replay, change.ue_compute) = (kv, replay, took);
            s
        } else if method == Method::Recompute {
            // The UE takes layers from..to and rebuilds them from its log.
            let (from_k, to_k) = (from.k, to.k);
            let (s, (), took) = on_model(state, move |m| {
                let model = m.model.clone();
                let log = m.log.as_mut().ok_or_else(|| split_core::Error::InvalidArgument("recompute without a boundary log".into()))?;
                let gained = migrate::recompute(&model.model, log, from_k..to_k)?;
                migrate::take(Side::Ue, &mut m.cache, gained)
            })
            .await?;
            change.ue_compute = took;
            s
        } else {
            state
        };
        let ue_us = change.ue_compute.as_micros() as u64;
        let bytes_up = conn.send(change).await?;
        let down_before = conn.bytes_down;
        let migrated = match conn.recv().await? {
            Reply::Migrated(m) => m,
            other => return Err(UeError::Protocol(format!("expected migrated, got {other:?}"))),
        };
        let (bytes_down, edge_compute) = (conn.bytes_down - down_before, migrated.edge_compute);
        if to.k > from.k && method == Method::Transfer {
            // The UE takes layers from..to: adopt the entries the edge sent.
            let (from_k, to_k, entries) = (from.k, to.k, migrated.kv);
            let (s, (), _) = on_model(state, move |m| {
                let gained = migrate::from_wire(&m.model.model, "migrated", &entries, from_k, to_k, position)?;
                migrate::take(Side::Ue, &mut m.cache, gained)
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
            edge_compute_us: edge_compute.as_micros() as u64,
            took_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        tracing::info!(
            from = from.k, to = to.k, epoch = %to.epoch, %method, took_ms = event.took_ms,
            bytes_up, bytes_down, "split changed"
        );
        Ok((state, event))
    }
}
