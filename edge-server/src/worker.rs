//! The model worker: one thread that owns every session's KV caches and runs all tensor math,
//! driven by jobs over a channel with oneshot replies (an actor, like TGI's queue), so no tokio
//! worker ever blocks on a forward pass.
//!
//! Decode steps of different sessions are batched, whatever their splits: the worker takes
//! whatever is queued (up to [`MAX_DRAIN`] jobs), checks each step on its own, and runs all the
//! single-row decode steps as one forward pass ([`SplitModel::run_layers_batch`]), in which a
//! session at split `k` joins at layer `k`. That gives every session exactly the bits it would
//! get alone. A session's jobs keep their
//! order; only jobs of different sessions may overtake each other.
//!
//! [`SplitModel::run_layers_batch`]: split_core::model::SplitModel::run_layers_batch

mod batch;
mod prefill;
pub mod score;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use split_core::bundle::LoadedModel;
use split_core::migrate::{self, Method, Side};
use split_core::model::KvCache;
use split_core::protocol::{LayerEntries, Migrate};
use split_core::sampling::{Sampler, SamplingConfig};
use split_core::split::{Epoch, Split, SplitPoint};
use split_core::calibration::Calibration;
use split_core::transform::LinkSetup;
use split_core::wire::{CandleWire, WireDType, WireTensor};
use tokio::sync::oneshot;

use crate::error::EdgeError;

/// Opaque session identifier handed to the UE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    pub fn parse(s: &str) -> Result<Self, EdgeError> {
        if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(EdgeError::InvalidArgument(format!("session id {s:?} is malformed")));
        }
        Ok(Self(s.to_string()))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct OpenParams {
    pub split: SplitPoint,
    pub epoch: Epoch,
    pub sampling: SamplingConfig,
    pub max_new_tokens: usize,
    /// Generation goes on past end-of-sequence tokens until `max_new_tokens`.
    pub ignore_eos: bool,
    pub prompt_tokens: usize,
    pub client: String,
    /// A session to resume, and the secret its Opened carried.
    pub resume: Option<SessionId>,
    pub resume_secret: String,
    /// Normalization and concealment (the dtype comes with each activation).
    pub link: LinkSetup,
    /// The calibration file the UE normalizes with; must be the edge's when `link` needs one.
    pub calibration_sha256: String,
    /// Teacher-forced scoring ([`score`]) instead of generation.
    pub scoring: bool,
}

#[derive(Debug, Clone)]
pub struct Opened {
    pub id: SessionId,
    pub position: usize,
    /// What a resume of this session must present.
    pub secret: String,
    /// On a resume: the token of the last completed step (at `position`), if any, with the
    /// timings measured when it was computed.
    pub last_token: Option<TokenOut>,
}

#[derive(Debug)]
pub struct StepInput {
    pub session: SessionId,
    pub position: usize,
    /// The split the UE computed this activation at.
    pub split: Split,
    pub hidden: WireTensor,
    /// One bit per element the channel erased (LSB first), for concealment; empty: none.
    pub erased: Vec<u8>,
    pub enqueued: Instant,
}

/// The token a completed step produced.
#[derive(Debug, Clone, Copy)]
pub struct TokenOut {
    /// Position after the step (exclusive end of the rows it consumed).
    pub position: usize,
    pub id: u32,
    pub logprob: f32,
    /// From enqueueing to the start of the step's computation (for a batched step, the batch's
    /// start: the checks of the batch's members and jobs run before it count as queueing).
    pub queue: Duration,
    /// The step's computation. A batched step reports the whole batch's time (layers, head and
    /// sampling of every member), since the members share one forward pass: `queue + compute` is
    /// the time the step spent in the worker either way.
    pub compute: Duration,
    pub eos: bool,
    /// How many sessions' steps shared the forward pass that produced this token (1 if alone).
    pub batch: usize,
}

/// A live split change announced by the UE (see `splitinfer.v1.Migrate`).
#[derive(Debug)]
pub struct MigrateInput {
    pub session: SessionId,
    pub change: Migrate,
}

/// What the edge did for a split change.
#[derive(Debug)]
pub struct MigrateOut {
    /// TRANSFER toward the UE: the entries of the layers the UE takes.
    pub kv: Vec<LayerEntries>,
    pub compute: Duration,
}

/// What the edge carries now: open sessions (attached or kept for a resume) and, summed over them,
/// the layers it runs for each (`L − k`), i.e. the layer-steps of one decode round of them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    pub sessions: usize,
    pub layers: usize,
}

/// Where a session stands: prefill still short of the prompt, and whether it is done.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub position: usize,
    pub prompt_tokens: usize,
    pub finished: bool,
}

/// The most jobs the worker takes off its queue at once (by default), which bounds a batch: a
/// batch waits for at most this many checks, and the queue behind it is served in bounded rounds.
pub const MAX_DRAIN: usize = 32;

/// Rows of a prefill computed together, by default: a prefill message with more rows is computed
/// in chunks of this many, a unit (a piece of one layer) at a time between other sessions' work.
/// Deterministic (it does not depend on the load), so a prompt of more rows rounds like a UE that
/// sent such chunks (docs/survive.md, "One long prompt cannot starve the others").
pub const PREFILL_CHUNK_ROWS: usize = 32;

/// The share of the worker's time prefills in progress get, by default, while other sessions'
/// jobs are waiting: half, the prefills as one party and everything else as the other. See
/// [`WorkerOptions::prefill_share`].
pub const DEFAULT_PREFILL_SHARE: f64 = 0.5;

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Sessions open at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_sessions: usize,
    /// Jobs taken off the queue per round, which bounds a decode batch (1 = no batching).
    pub max_batch: usize,
    /// Statistics for sessions that normalize or conceal with them.
    pub calibration: Option<Arc<Calibration>>,
    /// See [`PREFILL_CHUNK_ROWS`].
    pub prefill_chunk_rows: usize,
    /// While a prefill is in progress, the share of the worker's busy time it gets when other
    /// jobs are waiting too (0 ≤ share < 1). Each round of other jobs earns the prefills
    /// `share / (1 − share)` of its time, which they spend on units before the next round, jobs
    /// waiting or not; without a job waiting they run anyway. 0: prefills run only while nothing
    /// else waits. Other sessions' steps then wait at most one unit, but a prompt arriving while
    /// another session streams gets only the gaps between its steps.
    pub prefill_share: f64,
    /// The KV cache all open sessions may grow to, together, in MiB: a session is admitted only
    /// if its prompt and `max_new_tokens` fit in every layer beside the others'.
    pub kv_budget_mib: u64,
}

/// The default KV budget: 8 GiB, about 180,000 SmolLM2 positions.
pub const DEFAULT_KV_BUDGET_MIB: u64 = 8192;

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            max_sessions: 256,
            max_batch: MAX_DRAIN,
            calibration: None,
            prefill_chunk_rows: PREFILL_CHUNK_ROWS,
            prefill_share: DEFAULT_PREFILL_SHARE,
            kv_budget_mib: DEFAULT_KV_BUDGET_MIB,
        }
    }
}

/// The largest [`WorkerOptions::prefill_share`]: at 1 other sessions would wait forever.
pub const MAX_PREFILL_SHARE: f64 = 0.95;

/// The time prefills may still take before the worker serves waiting jobs again.
struct PrefillCredit {
    /// Earned per unit of time spent on other jobs: `share / (1 − share)`.
    ratio: f64,
    left: Duration,
}

impl PrefillCredit {
    fn new(ratio: f64) -> Self {
        Self { ratio, left: Duration::ZERO }
    }

    /// A round of other jobs took `busy`. Its earning replaces what was left, so credit does not
    /// pile up into a long exclusive run later.
    fn earn(&mut self, busy: Duration) {
        self.left = busy.mul_f64(self.ratio);
    }

    /// A unit took `took`; `true` while credit is left (the next unit runs before any job).
    fn spend(&mut self, took: Duration) -> bool {
        self.left = self.left.saturating_sub(took);
        !self.left.is_zero()
    }
}

enum Job {
    Open(OpenParams, oneshot::Sender<Result<Opened, EdgeError>>),
    Step(StepInput, oneshot::Sender<Result<Option<TokenOut>, EdgeError>>),
    Migrate(MigrateInput, oneshot::Sender<Result<MigrateOut, EdgeError>>),
    /// End a session for good.
    Close(SessionId),
    /// The session's stream broke: keep it for a resume until it idles out.
    Detach(SessionId),
    Progress(SessionId, oneshot::Sender<Option<Progress>>),
    Score(score::ScoreInput, oneshot::Sender<Result<score::ScoreOut, EdgeError>>),
    Expire(Duration),
    Count(oneshot::Sender<Load>),
}

impl Job {
    /// The session a job reads or changes, if it concerns an existing one.
    fn session(&self) -> Option<&SessionId> {
        match self {
            Job::Open(p, _) => p.resume.as_ref(),
            Job::Step(s, _) => Some(&s.session),
            Job::Migrate(m, _) => Some(&m.session),
            Job::Score(s, _) => Some(&s.session),
            Job::Close(id) | Job::Detach(id) | Job::Progress(id, _) => Some(id),
            Job::Expire(_) | Job::Count(_) => None,
        }
    }
}

/// Handle to the model worker thread; cheap to clone.
#[derive(Clone)]
pub struct Worker {
    tx: mpsc::Sender<Job>,
}

impl Worker {
    pub fn spawn(model: Arc<LoadedModel>, max_sessions: usize) -> std::io::Result<Self> {
        Self::spawn_with_batch(model, max_sessions, MAX_DRAIN)
    }

    /// [`Worker::spawn`], taking at most `max_batch` queued jobs per round, which bounds a
    /// batch's size; 1 steps every session alone, as the edge did before batching.
    pub fn spawn_with_batch(model: Arc<LoadedModel>, max_sessions: usize, max_batch: usize) -> std::io::Result<Self> {
        Self::spawn_with(model, max_sessions, max_batch, None)
    }

    /// [`Worker::spawn_with_batch`], with the calibration statistics that sessions asking for
    /// normalization or mean concealment use (checked against the model by the caller).
    pub fn spawn_with(model: Arc<LoadedModel>, max_sessions: usize, max_batch: usize, calibration: Option<Arc<Calibration>>) -> std::io::Result<Self> {
        Self::start(model, WorkerOptions { max_sessions, max_batch, calibration, ..WorkerOptions::default() })
    }

    /// The worker with every option.
    pub fn start(model: Arc<LoadedModel>, options: WorkerOptions) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let take = options.max_batch.max(1) - 1;
        std::thread::Builder::new().name("edge-model".into()).spawn(move || {
            let mut state = State::new(model, options.max_sessions, options.calibration);
            state.prefill_chunk = options.prefill_chunk_rows.max(1);
            state.kv_budget = options.kv_budget_mib.saturating_mul(1 << 20);
            // Ends when every handle is dropped. While prefills are in progress the queue is only
            // polled: prefill units run between rounds, so a long prompt does not stall other
            // sessions' decode steps, and as many as its share of the time has earned, so they do
            // not starve it either.
            let share = options.prefill_share.clamp(0.0, MAX_PREFILL_SHARE);
            let mut credit = PrefillCredit::new(share / (1.0 - share));
            loop {
                let first = if state.prefilling() {
                    match rx.try_recv() {
                        Ok(job) => Some(job),
                        Err(mpsc::TryRecvError::Empty) => None,
                        Err(mpsc::TryRecvError::Disconnected) => break,
                    }
                } else {
                    match rx.recv() {
                        Ok(job) => Some(job),
                        Err(_) => break,
                    }
                };
                if let Some(job) = first {
                    let jobs: Vec<Job> = std::iter::once(job).chain(rx.try_iter().take(take)).collect();
                    let started = Instant::now();
                    let prefilling = state.prefilling();
                    state.handle_all(jobs);
                    if prefilling {
                        credit.earn(started.elapsed());
                    }
                }
                loop {
                    if !state.prefilling() {
                        credit = PrefillCredit::new(credit.ratio);
                        break;
                    }
                    let started = Instant::now();
                    state.prefill_unit();
                    if !credit.spend(started.elapsed()) {
                        break;
                    }
                }
            }
        })?;
        Ok(Self { tx })
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Job) -> Result<T, EdgeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| EdgeError::Unavailable("the model worker has stopped".into()))?;
        rx.await.map_err(|_| EdgeError::Internal("the model worker dropped a request".into()))
    }

    pub async fn open(&self, p: OpenParams) -> Result<Opened, EdgeError> {
        self.call(|r| Job::Open(p, r)).await?
    }

    pub async fn step(&self, s: StepInput) -> Result<Option<TokenOut>, EdgeError> {
        self.call(|r| Job::Step(s, r)).await?
    }

    pub async fn migrate(&self, m: MigrateInput) -> Result<MigrateOut, EdgeError> {
        self.call(|r| Job::Migrate(m, r)).await?
    }

    pub async fn progress(&self, id: &SessionId) -> Result<Option<Progress>, EdgeError> {
        self.call(|r| Job::Progress(id.clone(), r)).await
    }

    pub async fn active_sessions(&self) -> Result<usize, EdgeError> {
        Ok(self.load().await?.sessions)
    }

    /// The sessions open now and the layers this edge runs for them.
    pub async fn load(&self) -> Result<Load, EdgeError> {
        self.call(Job::Count).await
    }

    pub fn close(&self, id: SessionId) {
        let _ = self.tx.send(Job::Close(id));
    }

    pub fn detach(&self, id: SessionId) {
        let _ = self.tx.send(Job::Detach(id));
    }

    pub fn expire(&self, idle: Duration) {
        let _ = self.tx.send(Job::Expire(idle));
    }
}

struct Session {
    split: SplitPoint,
    /// Split epoch of the latest activation or migration; never decreases.
    epoch: Epoch,
    /// Element type of the UE's activations, in which moved caches go back to it.
    wire: WireDType,
    /// The receiver's half of the link: undo the UE's normalization, conceal lost elements.
    link: LinkSetup,
    cache: KvCache,
    sampler: Sampler,
    prompt_tokens: usize,
    max_new_tokens: usize,
    ignore_eos: bool,
    generated: usize,
    finished: bool,
    attached: bool,
    last_active: Instant,
    client: String,
    /// Compared in constant time with a resume's.
    secret: String,
    sampling: SamplingConfig,
    /// The token of the last completed step, kept for a resume whose stream lost it.
    last_token: Option<TokenOut>,
    /// A scoring session: its windows each run from an empty cache of their own.
    scoring: bool,
}

impl Session {
    /// The positions this session's caches may grow to, which it holds against the KV budget: a
    /// scoring session's window may be the whole context.
    fn kv_positions(&self, context_length: usize) -> usize {
        if self.scoring { context_length } else { self.prompt_tokens + self.max_new_tokens }
    }
}

struct State {
    model: Arc<LoadedModel>,
    /// The calibration statistics sessions may normalize and conceal with.
    calibration: Option<Arc<Calibration>>,
    max_sessions: usize,
    sessions: HashMap<SessionId, Session>,
    /// Recently expired ids, so a late resume hears "expired" rather than "unknown".
    expired: VecDeque<SessionId>,
    /// Prefill steps in progress, served a unit (a piece of a layer) at a time in turn.
    prefills: VecDeque<prefill::Prefill>,
    prefill_chunk: usize,
    /// What the open sessions' caches may grow to, together (see `open`).
    kv_budget: u64,
}

/// The receiver's half of the link for an activation at split `k` whose first row is at
/// `position`: the codec decoded, the UE's normalization undone and lost elements concealed, as a
/// `[1, rows, hidden]` tensor. Refuses a non-finite value. `hidden`'s shape is checked by the caller.
fn receive(
    calibration: Option<&Calibration>,
    model: &split_core::model::SplitModel,
    link: LinkSetup,
    k: usize,
    hidden: &WireTensor,
    erased: &[u8],
    position: usize,
) -> Result<Tensor, EdgeError> {
    let setup = LinkSetup { dtype: hidden.dtype(), ..link };
    let stats = match calibration {
        Some(c) if setup.needs_calibration() => Some(c.boundary(k)?),
        _ => None,
    };
    let values = setup.decode(hidden, erased, stats, position)?;
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(EdgeError::InvalidArgument(format!("activation holds a non-finite value {v} at element {i}")));
    }
    Ok(Tensor::from_vec(values, hidden.shape().to_vec(), model.device())?)
}

/// 128 bits from the thread's CSPRNG (ChaCha, seeded from the OS), as hex.
fn random_hex() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const EXPIRED_MEMORY: usize = 4096;

/// A step that passed [`State::check_step`].
struct CheckedStep {
    /// The activation, `[1, rows, hidden]`.
    x: Tensor,
    /// The session's position before the step.
    position: usize,
    rows: usize,
    /// A single-row step after the prompt: it may share a forward pass.
    decode: bool,
}

/// Samples a session's next token from its logits and counts it: `(id, logprob, eos)`.
fn sample(sess: &mut Session, model: &LoadedModel, logits: &[f32]) -> Result<(u32, f32, bool), EdgeError> {
    let sampled = sess.sampler.sample(logits)?;
    sess.generated += 1;
    let eos = model.tokenizer.is_eos(sampled.id);
    sess.finished = (eos && !sess.ignore_eos) || sess.generated >= sess.max_new_tokens;
    Ok((sampled.id, sampled.logprob, eos))
}

impl State {
    fn new(model: Arc<LoadedModel>, max_sessions: usize, calibration: Option<Arc<Calibration>>) -> Self {
        Self {
            model,
            calibration,
            max_sessions,
            sessions: HashMap::new(),
            expired: VecDeque::new(),
            prefills: VecDeque::new(),
            prefill_chunk: PREFILL_CHUNK_ROWS,
            kv_budget: DEFAULT_KV_BUDGET_MIB << 20,
        }
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::Open(p, reply) => {
                let _ = reply.send(self.open(p));
            }
            // Steps are batched and interleaved by `handle_all`; one that comes here alone takes
            // the same path.
            step @ Job::Step(..) => self.handle_all(vec![step]),
            Job::Migrate(m, reply) => {
                let _ = reply.send(self.migrate(m));
            }
            Job::Score(s, reply) => {
                let _ = reply.send(self.score(s));
            }
            Job::Close(id) => {
                if let Some(s) = self.sessions.remove(&id) {
                    tracing::debug!(session = %id, client = %s.client, generated = s.generated, "session closed");
                }
            }
            Job::Detach(id) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.attached = false;
                    s.last_active = Instant::now();
                }
            }
            Job::Progress(id, reply) => {
                let _ = reply.send(self.sessions.get(&id).map(|s| Progress {
                    position: s.cache.position(),
                    prompt_tokens: s.prompt_tokens,
                    finished: s.finished,
                }));
            }
            Job::Expire(idle) => self.expire(idle),
            Job::Count(reply) => {
                let n = self.model.model.n_layers();
                let layers = self.sessions.values().map(|s| n - s.split.k()).sum();
                let _ = reply.send(Load { sessions: self.sessions.len(), layers });
            }
        }
    }

    /// KV cache bytes of `positions` positions in every layer (f32 keys and values).
    fn kv_bytes(&self, positions: usize) -> u64 {
        let c = self.model.model.config();
        let element = self.model.model.kv_dtype().size_in_bytes();
        (positions * c.n_layers * 2 * c.n_kv_heads * c.head_dim * element) as u64
    }

    fn missing(&self, id: &SessionId) -> EdgeError {
        if self.expired.contains(id) {
            EdgeError::NotFound(format!("session {id} expired after being idle"))
        } else {
            EdgeError::NotFound(format!("unknown session {id}"))
        }
    }

    fn open(&mut self, p: OpenParams) -> Result<Opened, EdgeError> {
        if let Some(id) = p.resume {
            let missing = self.missing(&id);
            // A wrong secret reads as an unknown id: it tells a guesser nothing.
            let s = self.sessions.get_mut(&id).filter(|s| same_secret(&s.secret, &p.resume_secret)).ok_or(missing)?;
            let differs = [
                ("prompt_tokens", s.prompt_tokens != p.prompt_tokens),
                ("max_new_tokens", s.max_new_tokens != p.max_new_tokens),
                ("sampling", s.sampling != p.sampling),
                ("ignore_eos", s.ignore_eos != p.ignore_eos),
                ("normalization", s.link.normalization != p.link.normalization),
                ("concealment", s.link.concealment != p.link.concealment),
                ("scoring", s.scoring != p.scoring),
            ];
            if let Some((field, _)) = differs.iter().find(|(_, d)| *d) {
                return Err(EdgeError::InvalidArgument(format!("resume of session {id} with another {field} than it was opened with")));
            }
            if s.attached {
                return Err(EdgeError::FailedPrecondition(format!("session {id} is still attached to another stream")));
            }
            if s.split != p.split {
                return Err(EdgeError::InvalidArgument(format!(
                    "resume of session {id} with split k={} but it runs k={}",
                    p.split.k(),
                    s.split.k()
                )));
            }
            s.attached = true;
            s.last_active = Instant::now();
            return Ok(Opened { id, position: s.cache.position(), secret: s.secret.clone(), last_token: s.last_token });
        }
        if p.link.needs_calibration() {
            let Some(c) = &self.calibration else {
                return Err(EdgeError::FailedPrecondition(format!(
                    "normalization {} / concealment {} need calibration statistics, and this edge has none (EDGE_CALIBRATION)",
                    p.link.normalization, p.link.concealment
                )));
            };
            if !p.calibration_sha256.eq_ignore_ascii_case(&c.file_sha256) {
                return Err(EdgeError::FailedPrecondition(format!(
                    "the UE normalizes with calibration sha256 {:?} but this edge holds {}",
                    p.calibration_sha256, c.file_sha256
                )));
            }
        }
        if self.sessions.len() >= self.max_sessions {
            return Err(EdgeError::ResourceExhausted(format!(
                "the edge already serves {} sessions, its limit (EDGE_MAX_SESSIONS)",
                self.max_sessions
            )));
        }
        let limit = self.model.model.config().context_length;
        if p.scoring {
            if p.prompt_tokens != 0 || p.max_new_tokens != 0 {
                return Err(EdgeError::InvalidArgument(format!(
                    "a scoring session takes its windows as activations: prompt_tokens ({}) and max_new_tokens ({}) must be 0",
                    p.prompt_tokens, p.max_new_tokens
                )));
            }
        } else if p.prompt_tokens == 0 {
            return Err(EdgeError::InvalidArgument("prompt_tokens is 0: a session needs a prompt".into()));
        } else if p.max_new_tokens == 0 {
            return Err(EdgeError::InvalidArgument("max_new_tokens is 0: nothing to generate".into()));
        }
        if p.prompt_tokens + p.max_new_tokens > limit {
            return Err(EdgeError::ResourceExhausted(format!(
                "prompt_tokens {} + max_new_tokens {} exceeds the model's context of {limit}",
                p.prompt_tokens, p.max_new_tokens
            )));
        }
        // Admission by memory: a session's caches may grow to all its positions in every layer
        // (a split change can move every layer here), and that is what it holds against the budget.
        let positions = if p.scoring { limit } else { p.prompt_tokens + p.max_new_tokens };
        let need = self.kv_bytes(positions);
        let committed: u64 = self.sessions.values().map(|s| self.kv_bytes(s.kv_positions(limit))).sum();
        if committed + need > self.kv_budget {
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            return Err(EdgeError::ResourceExhausted(format!(
                "this session could need {:.1} MiB of KV cache ({} positions), but {:.1} of the edge's {:.0} MiB budget (EDGE_KV_BUDGET_MIB) is committed to {} sessions",
                mib(need),
                positions,
                mib(committed),
                mib(self.kv_budget),
                self.sessions.len()
            )));
        }
        // Random, not counted: a client must not predict another's id from its own.
        let id = SessionId(format!("s{}", random_hex()));
        let secret = random_hex();
        let n_layers = self.model.model.n_layers();
        self.sessions.insert(
            id.clone(),
            Session {
                split: p.split,
                epoch: p.epoch,
                wire: WireDType::F32,
                link: p.link,
                cache: KvCache::new(p.split.edge_layers(n_layers)),
                sampler: Sampler::new(p.sampling)?,
                prompt_tokens: p.prompt_tokens,
                max_new_tokens: p.max_new_tokens,
                ignore_eos: p.ignore_eos,
                generated: 0,
                finished: false,
                attached: true,
                last_active: Instant::now(),
                client: p.client,
                secret: secret.clone(),
                sampling: p.sampling,
                last_token: None,
                scoring: p.scoring,
            },
        );
        Ok(Opened { id, position: 0, secret, last_token: None })
    }

    /// Every check of a step against its session, before anything changes: the same for a step
    /// run alone and one that waits for a batch, so both refuse the same input with the same words.
    fn check_step(&mut self, s: &StepInput) -> Result<CheckedStep, EdgeError> {
        let missing = self.missing(&s.session);
        let model = &self.model.model;
        let hidden_size = model.config().hidden_size;
        let sess = self.sessions.get_mut(&s.session).ok_or(missing)?;
        sess.last_active = Instant::now();
        let id = &s.session;
        if s.split.k != sess.split.k() {
            return Err(EdgeError::FailedPrecondition(format!(
                "activation computed with split k={} but session {id} runs k={} (epoch {}); a split change is announced with a migrate message first",
                s.split.k,
                sess.split.k(),
                sess.epoch
            )));
        }
        if s.split.epoch < sess.epoch {
            return Err(EdgeError::InvalidArgument(format!(
                "activation names split epoch {} but session {id} is already at epoch {}",
                s.split.epoch, sess.epoch
            )));
        }
        let pos = sess.cache.position();
        if s.position < pos {
            return Err(EdgeError::InvalidArgument(format!(
                "activation at position {} repeats: session {id} is already at position {pos}",
                s.position
            )));
        }
        if s.position > pos {
            return Err(EdgeError::InvalidArgument(format!(
                "activation at position {} is out of order: session {id} expects position {pos}",
                s.position
            )));
        }
        let rows = match *s.hidden.shape() {
            [1, rows, h] if h == hidden_size && rows > 0 => rows,
            [1, _, h] if h != hidden_size => {
                return Err(EdgeError::InvalidArgument(format!(
                    "hidden size {h} differs from the model's {hidden_size}"
                )));
            }
            ref shape => {
                return Err(EdgeError::InvalidArgument(format!(
                    "activation shape {shape:?} is not [1, rows >= 1, {hidden_size}]"
                )));
            }
        };
        let prefill_left = sess.prompt_tokens.saturating_sub(pos);
        if prefill_left > 0 {
            if rows > prefill_left {
                return Err(EdgeError::InvalidArgument(format!(
                    "prefill chunk of {rows} rows overruns the prompt: {prefill_left} of {} prompt rows remain",
                    sess.prompt_tokens
                )));
            }
        } else {
            if rows != 1 {
                return Err(EdgeError::InvalidArgument(format!("a decode step carries 1 row, got {rows}")));
            }
            if sess.generated >= sess.max_new_tokens {
                return Err(EdgeError::ResourceExhausted(format!(
                    "session {id} already generated its max_new_tokens={}",
                    sess.max_new_tokens
                )));
            }
        }
        let x = receive(self.calibration.as_deref(), model, sess.link, sess.split.k(), &s.hidden, &s.erased, pos)?;
        Ok(CheckedStep { x, position: pos, rows, decode: prefill_left == 0 })
    }

    /// Moves the split of a session at a token boundary: the layers that change sides leave or
    /// join this session's caches. Checks everything before changing anything, so a refused
    /// migration leaves the session as it was.
    fn migrate(&mut self, input: MigrateInput) -> Result<MigrateOut, EdgeError> {
        let started = Instant::now();
        let (id, m) = (&input.session, &input.change);
        let missing = self.missing(id);
        let model = &self.model.model;
        let n_layers = model.n_layers();
        let sess = self.sessions.get_mut(id).ok_or(missing)?;
        sess.last_active = Instant::now();
        let (from, to) = (m.from.k, m.to.k);
        if from != sess.split.k() {
            return Err(EdgeError::FailedPrecondition(format!(
                "migrate from split k={from} but session {id} runs k={}",
                sess.split.k()
            )));
        }
        let to_split = model.split_point(to)?;
        if to == from {
            return Err(EdgeError::InvalidArgument(format!("migrate to the split session {id} already runs (k={to})")));
        }
        if m.to.epoch < sess.epoch || m.to.epoch < m.from.epoch {
            return Err(EdgeError::InvalidArgument(format!(
                "migrate to split epoch {} but session {id} is already at epoch {}",
                m.to.epoch,
                sess.epoch.max(m.from.epoch)
            )));
        }
        let pos = sess.cache.position();
        if m.position != pos {
            return Err(EdgeError::InvalidArgument(format!(
                "migrate at position {} but session {id} is at position {pos}: a split changes between steps",
                m.position
            )));
        }
        let mut out = Vec::new();
        if to < from {
            // The edge takes layers to..from.
            let gained = match m.method {
                Method::Transfer => migrate::from_wire(model, "migrate", &m.kv, from, to, pos)?,
                Method::Recompute => {
                    let replay = m.replay.as_ref().ok_or_else(|| EdgeError::InvalidArgument("recompute migration carries no replay states".into()))?;
                    let hidden = model.config().hidden_size;
                    if replay.states.shape() != [1, pos, hidden] {
                        return Err(EdgeError::InvalidArgument(format!(
                            "replay states have shape {:?}, expected [1, {pos}, {hidden}]",
                            replay.states.shape()
                        )));
                    }
                    migrate::replay(model, &replay.states.to_tensor(model.device())?, &replay.chunks, to..from)?
                }
            };
            migrate::take(Side::Edge, &mut sess.cache, gained)?;
        } else {
            // The UE takes layers from..to.
            let given = migrate::give(Side::Edge, &mut sess.cache, to)?;
            if m.method == Method::Transfer {
                out = migrate::to_wire(&given, sess.wire)?;
            }
        }
        debug_assert_eq!(sess.cache.range(), to_split.edge_layers(n_layers));
        tracing::info!(
            session = %id, from, to, epoch = m.to.epoch.get(), method = %m.method, position = pos,
            compute_ms = started.elapsed().as_secs_f64() * 1e3, "split changed"
        );
        sess.split = to_split;
        sess.epoch = m.to.epoch;
        Ok(MigrateOut { kv: out, compute: started.elapsed() })
    }

    fn expire(&mut self, idle: Duration) {
        let now = Instant::now();
        let stale: Vec<SessionId> = self
            .sessions
            .iter()
            // Only sessions whose stream broke: an attached session lives as long as its stream
            // (a dead connection is found by HTTP/2 keepalive and detaches it).
            .filter(|(_, s)| !s.attached && now.duration_since(s.last_active) > idle)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.sessions.remove(&id);
            tracing::info!(session = %id, idle_ms = idle.as_millis() as u64, "session expired");
            if self.expired.len() == EXPIRED_MEMORY {
                self.expired.pop_front();
            }
            self.expired.push_back(id);
        }
    }
}

#[cfg(test)]
mod credit_tests {
    use super::*;

    #[test]
    fn a_prefill_earns_its_share_of_each_round_and_no_more() {
        let ms = Duration::from_millis;
        // Share 0.5: a 12 ms round of other jobs buys 12 ms of prefill units.
        let mut c = PrefillCredit::new(0.5 / (1.0 - 0.5));
        assert!(!c.spend(ms(3)), "no credit before any round");
        c.earn(ms(12));
        assert!(c.spend(ms(5)) && c.spend(ms(5)), "7 ms, then 2 ms left");
        assert!(!c.spend(ms(5)), "spent");
        // Earnings do not pile up: the next round's replaces what was left.
        c.earn(ms(40));
        c.earn(ms(4));
        assert!(c.spend(ms(3)) && !c.spend(ms(2)));
        // Share 0: the prefill gets only what no job waits for.
        let mut none = PrefillCredit::new(0.0);
        none.earn(ms(100));
        assert!(!none.spend(Duration::from_micros(1)));
    }
}
