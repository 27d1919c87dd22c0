//! One generation session that outlives its link.
//!
//! A step sends its activations and waits for the token, with a deadline per reply. When the
//! link breaks (a reset, a stream that ends without a status, `UNAVAILABLE`, no reply within the
//! step timeout) the session reconnects with bounded exponential backoff and jitter, within the
//! resume deadline, and comes back one of two ways:
//!
//! - **Resume**: the edge still holds the session. `Open` names it with its secret, and
//!   `Opened.position` says where the edge stands. The UE resends its activations from there.
//!   If the edge had completed the step, it takes the token from `Opened.last_token`. Nothing is
//!   lost or repeated.
//! - **Replay** (failover): the session is gone, because the edge restarted, the session idled
//!   out, or this is another edge from `--edge a,b`. The UE opens a new session and rebuilds its
//!   own layers from the token ids it already has, in the row chunks they were first computed in.
//!   It uploads every past boundary state. The new edge rebuilds its caches bit for bit (f32,
//!   same code). The tokens the edge returns on the way are checked against the ones already
//!   printed.
//!
//! What the UE keeps for a replay is the token ids (4 bytes per position) and the row count of
//! every step (8 bytes per step). Nothing grows with the hidden size, so retention is bounded by
//! the context length. The cost is compute: a replay runs the UE's k layers over the whole
//! sequence again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use split_core::bundle::LoadedModel;
use split_core::migrate::BoundaryLog;
use split_core::model::KvCache;
use split_core::protocol::{Migrated, Open, Opened, Resume, Step, Token};
use split_core::split::Split;
use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::edge_client::EdgeClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use crate::{GenerateRequest, UeError, UeModel, connect_tls, on_model};

/// Where the edge is: one URL, or several to fail over between (in order, round robin).
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub urls: Vec<String>,
    /// How to dial them: plaintext (the default) or TLS.
    pub tls: splitinfer_telemetry::Tls,
    pub max_message_bytes: usize,
    pub connect_timeout: Duration,
}

/// How hard a session tries to survive its link.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    /// How long after the link breaks the UE keeps trying to resume or fail over; zero gives up
    /// at once.
    pub deadline: Duration,
    /// No reply from the edge for this long counts as a broken link.
    pub step_timeout: Duration,
    /// First wait before reconnecting; doubles per attempt up to `backoff_max`, each wait
    /// jittered to between half and all of it.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Recovery {
    /// Never reconnect; a reply may take up to an hour.
    pub const NONE: Self = Self {
        deadline: Duration::ZERO,
        step_timeout: Duration::from_secs(3600),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
    };

    pub fn new(deadline: Duration, step_timeout: Duration) -> Self {
        Self { deadline, step_timeout, ..Self::NONE }
    }
}

/// Whether `e` is the link breaking, rather than the edge refusing something.
pub(crate) fn broken(e: &UeError) -> bool {
    match e {
        UeError::Link(_) => true,
        UeError::Edge(s) => matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted),
        _ => false,
    }
}

/// One direction of the gRPC stream each way.
pub(crate) struct Stream {
    tx: mpsc::Sender<pb::UeMessage>,
    inbound: tonic::Streaming<pb::EdgeMessage>,
}

/// What the edge says on a generation stream, checked (see [`split_core::protocol`]).
#[derive(Debug)]
pub(crate) enum Reply {
    Opened(Opened),
    Token(Token),
    Migrated(Migrated),
}

impl TryFrom<pb::edge_message::Kind> for Reply {
    type Error = UeError;

    fn try_from(kind: pb::edge_message::Kind) -> Result<Self, UeError> {
        Ok(match kind {
            pb::edge_message::Kind::Opened(o) => Self::Opened(o.try_into()?),
            pb::edge_message::Kind::Token(t) => Self::Token(t.try_into()?),
            pb::edge_message::Kind::Migrated(m) => Self::Migrated(m.try_into()?),
            pb::edge_message::Kind::Scores(_) => return Err(UeError::Protocol("scores on a generation stream".into())),
        })
    }
}

/// How a session came back after its link broke.
pub(crate) enum Recovered {
    /// The same session: the edge is at `position`, and this is its last token, if any.
    Resumed { position: usize, last_token: Option<Token> },
    /// A new session at the same split: the UE must replay everything.
    Fresh,
}

/// The session's connection and identity.
pub(crate) struct Conn<'a> {
    pub client: EdgeClient<Channel>,
    endpoints: Option<&'a Endpoints>,
    url_index: usize,
    pub recovery: Recovery,
    pub id: String,
    secret: String,
    stream: Option<Stream>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub resumes: usize,
    pub replays: usize,
    /// Time spent in replays, reconnections during them included.
    pub replay_time: Duration,
}

impl<'a> Conn<'a> {
    pub fn new(client: EdgeClient<Channel>, endpoints: Option<&'a Endpoints>, recovery: Recovery) -> Self {
        Self {
            client,
            endpoints,
            url_index: 0,
            recovery,
            id: String::new(),
            secret: String::new(),
            stream: None,
            bytes_up: 0,
            bytes_down: 0,
            resumes: 0,
            replays: 0,
            replay_time: Duration::ZERO,
        }
    }

    fn open_message(model: &LoadedModel, req: &GenerateRequest, split: Split, resume: Option<Resume>) -> pb::UeMessage {
        let open = Open {
            model_sha256: model.sha256.clone(),
            split,
            sampling: req.sampling,
            max_new_tokens: req.max_new_tokens,
            prompt_tokens: req.prompt.len(),
            ignore_eos: req.ignore_eos,
            client: req.client.clone(),
            resume,
            link: req.link(),
            calibration_sha256: req.calibration.as_ref().map(|c| c.file_sha256.clone()).unwrap_or_default(),
            scoring: false,
        };
        pb::UeMessage { kind: Some(pb::ue_message::Kind::Open(open.into())) }
    }

    /// Opens a stream (a new session, or a resume of this one) and reads its `Opened`.
    pub async fn open(&mut self, model: &LoadedModel, req: &GenerateRequest, split: Split, resume: bool) -> Result<Opened, UeError> {
        let (tx, rx) = mpsc::channel::<pb::UeMessage>(8);
        let resume = resume.then(|| Resume { session_id: self.id.clone(), secret: self.secret.clone() });
        let open = Self::open_message(model, req, split, resume);
        self.bytes_up += open.encoded_len() as u64;
        tx.send(open).await.map_err(|_| UeError::Link("the request stream closed early".into()))?;
        let call = self.client.generate(ReceiverStream::new(rx));
        let inbound = match tokio::time::timeout(self.recovery.step_timeout, call).await {
            Ok(r) => r.map_err(UeError::Edge)?.into_inner(),
            Err(_) => return Err(self.silent()),
        };
        self.stream = Some(Stream { tx, inbound });
        match self.recv().await? {
            Reply::Opened(o) => {
                self.id = o.session_id.clone();
                self.secret = o.resume_secret.clone();
                Ok(o)
            }
            other => Err(UeError::Protocol(format!("expected opened, got {other:?}"))),
        }
    }

    fn silent(&self) -> UeError {
        UeError::Link(format!("no answer from the edge for {} ms (step timeout)", self.recovery.step_timeout.as_millis()))
    }

    fn stream(&mut self) -> Result<&mut Stream, UeError> {
        self.stream.as_mut().ok_or_else(|| UeError::Link("no stream to the edge".into()))
    }

    pub async fn send(&mut self, msg: impl Into<pb::ue_message::Kind>) -> Result<u64, UeError> {
        let msg = pb::UeMessage { kind: Some(msg.into()) };
        let n = msg.encoded_len() as u64;
        let tx = self.stream()?.tx.clone();
        tx.send(msg).await.map_err(|_| UeError::Link("the request stream closed early".into()))?;
        self.bytes_up += n;
        Ok(n)
    }

    /// The next message from the edge, within the step timeout.
    pub async fn recv(&mut self) -> Result<Reply, UeError> {
        let timeout = self.recovery.step_timeout;
        let inbound = &mut self.stream()?.inbound;
        let m = match tokio::time::timeout(timeout, inbound.message()).await {
            Ok(m) => m,
            Err(_) => return Err(self.silent()),
        };
        match m {
            Ok(Some(m)) => {
                self.bytes_down += m.encoded_len() as u64;
                m.kind.ok_or_else(|| UeError::Protocol("empty message from the edge".into()))?.try_into()
            }
            Ok(None) => Err(UeError::Link("the edge closed the stream without a status".into())),
            Err(s) => Err(UeError::Edge(s)),
        }
    }

    /// Ends our side and waits for the edge to end its, so a late error is not lost.
    pub async fn finish(&mut self) -> Result<(), UeError> {
        let Some(Stream { tx, mut inbound }) = self.stream.take() else { return Ok(()) };
        drop(tx);
        match tokio::time::timeout(self.recovery.step_timeout, inbound.message()).await {
            Ok(Ok(_)) | Err(_) => Ok(()),
            Ok(Err(s)) => Err(UeError::Edge(s)),
        }
    }

    /// Brings the session back after `cause` broke its link: resumes it where the edge still
    /// holds it (unless `fresh` asks for a new session), else opens a new one to replay into.
    pub async fn recover(&mut self, model: &LoadedModel, req: &GenerateRequest, split: Split, cause: UeError, fresh: bool) -> Result<Recovered, UeError> {
        let Some(endpoints) = self.endpoints.filter(|e| !e.urls.is_empty() && !self.recovery.deadline.is_zero()) else {
            return Err(cause);
        };
        self.stream = None;
        let started = Instant::now();
        let deadline = self.recovery.deadline;
        let mut wait = self.recovery.backoff_initial;
        let mut last = cause;
        let mut resume = !fresh && !self.id.is_empty();
        tracing::warn!(session = %self.id, error = %last, "link to the edge broken; reconnecting");
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(UeError::Unavailable(format!(
                    "the link to the edge broke and did not come back within {} ms (resume deadline); last error: {last}",
                    deadline.as_millis()
                )));
            }
            tokio::time::sleep(jitter(wait).min(left)).await;
            wait = (wait * 2).min(self.recovery.backoff_max);
            let url = &endpoints.urls[self.url_index % endpoints.urls.len()];
            match connect_tls(url, &endpoints.tls, endpoints.max_message_bytes, endpoints.connect_timeout.min(left.max(Duration::from_millis(1)))).await {
                Ok(c) => self.client = c,
                Err(e) => {
                    tracing::info!(%url, error = %e, "reconnect failed");
                    last = e;
                    self.url_index += 1;
                    continue;
                }
            }
            if resume {
                match self.open(model, req, split, true).await {
                    Ok(o) => {
                        self.resumes += 1;
                        tracing::info!(%url, session = %self.id, position = o.position, "session resumed");
                        return Ok(Recovered::Resumed { position: o.position, last_token: o.last_token });
                    }
                    // The edge has not yet noticed the old stream break: try again shortly.
                    Err(UeError::Edge(s)) if s.code() == Code::FailedPrecondition && s.message().contains("still attached") => {
                        last = UeError::Edge(s);
                        continue;
                    }
                    Err(e) if broken(&e) => {
                        last = e;
                        continue;
                    }
                    // Gone (restarted, expired, another edge) or changed: start over.
                    Err(UeError::Edge(s)) if matches!(s.code(), Code::NotFound | Code::InvalidArgument) => {
                        tracing::info!(%url, session = %self.id, reason = s.message(), "session gone; replaying into a new one");
                        resume = false;
                    }
                    Err(e) => return Err(e),
                }
            }
            match self.open(model, req, split, false).await {
                Ok(_) => {
                    self.replays += 1;
                    tracing::info!(%url, session = %self.id, "new session; replaying");
                    return Ok(Recovered::Fresh);
                }
                Err(e) if broken(&e) => {
                    last = e;
                    self.url_index += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Between half and all of `d`, so many UEs that lost one edge do not come back in step.
fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    d.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// The UE's history: what a replay needs to rebuild everything.
pub(crate) struct History {
    /// Prompt and generated token ids, in the order they went in.
    pub inputs: Vec<u32>,
    /// Rows of every message sent so far (prefill chunks, then one per token).
    pub chunks: Vec<usize>,
}

/// Replays `history` into the fresh session on `conn`: a new UE state at `split`, every past
/// chunk through the UE's layers and to the edge, the tokens it returns checked against
/// `generated` (the ones already printed). A token beyond `generated` (the step the link broke
/// in) is returned.
pub(crate) async fn replay(
    conn: &mut Conn<'_>,
    model: &Arc<LoadedModel>,
    req: &GenerateRequest,
    split: Split,
    history: &History,
    generated: &[u32],
    keep_log: bool,
) -> Result<(UeModel, Option<Token>), UeError> {
    let started = Instant::now();
    let log = keep_log.then(BoundaryLog::new);
    let mut state = UeModel { model: model.clone(), cache: KvCache::new(0..split.k), log, chunks: Vec::new() };
    let prompt_len = req.prompt.len();
    let mut offset = 0usize;
    let mut produced = 0usize;
    let mut mismatches = 0usize;
    let mut pending = None;
    // Chunk by chunk, as first sent: the edge answers every one that ends in or after the prompt.
    for &rows in &history.chunks {
        let position = offset;
        let tokens_in = history.inputs[offset..offset + rows].to_vec();
        let (link, calibration) = (req.link(), req.calibration.clone());
        let (s, hidden, took) = on_model(state, move |m| m.step(&tokens_in, link, calibration.as_deref())).await?;
        state = s;
        conn.send(Step::generate(position, split, hidden, took)).await?;
        offset += rows;
        if offset >= prompt_len {
            let t = match conn.recv().await? {
                Reply::Token(t) => t,
                other => return Err(UeError::Protocol(format!("expected a token during replay, got {other:?}"))),
            };
            match generated.get(produced) {
                Some(&want) if want != t.id => mismatches += 1,
                Some(_) => {}
                None => pending = Some(t),
            }
            produced += 1;
        }
    }
    if mismatches > 0 {
        // The UE feeds its own token ids back, so the text stays what was printed; the edge's
        // answers differ only where the channel perturbed the replayed states.
        tracing::warn!(mismatches, "replayed steps gave other tokens than the first time (a noisy channel?); the printed text stands");
    }
    tracing::info!(positions = offset, steps = history.chunks.len(), took_ms = started.elapsed().as_secs_f64() * 1e3, "replay done");
    Ok((state, pending))
}
