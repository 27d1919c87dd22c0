//! The `splitinfer.v1.Edge` service: one task per stream, all model work sent to the [`Worker`].

use std::time::Instant;

use split_core::bundle::LoadedModel;
use split_core::protocol::{Migrate, Migrated, Open, Opened, Step, Token};
use split_core::split::Split;
use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::edge_server::Edge;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::error::EdgeError;
use crate::metrics::EdgeMetrics;
use prost::Message;
use crate::worker::score::ScoreInput;
use crate::worker::{MigrateInput, OpenParams, SessionId, StepInput, Worker};

pub struct EdgeService {
    pub(crate) worker: Worker,
    pub(crate) metrics: Arc<EdgeMetrics>,
    pub(crate) model: Arc<LoadedModel>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) max_message_bytes: usize,
    pub(crate) step_timeout: std::time::Duration,
}

type Reply = Result<pb::EdgeMessage, Status>;

#[tonic::async_trait]
impl Edge for EdgeService {
    type GenerateStream = ReceiverStream<Reply>;

    async fn generate(&self, request: Request<Streaming<pb::UeMessage>>) -> Result<Response<Self::GenerateStream>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let session = SessionTask {
            worker: self.worker.clone(),
            metrics: self.metrics.clone(),
            model: self.model.clone(),
            shutdown: self.shutdown.clone(),
            max_message_bytes: self.max_message_bytes,
            step_timeout: self.step_timeout,
            tx,
        };
        let span = tracing::info_span!("session", %peer, id = tracing::field::Empty, split = tracing::field::Empty);
        tokio::spawn(session.run(inbound).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn info(&self, _: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        let c = self.model.model.config();
        let load = self.worker.load().await.map_err(Status::from)?;
        Ok(Response::new(pb::InfoResponse {
            model_name: c.name.clone(),
            architecture: c.architecture.gguf_name().into(),
            model_sha256: self.model.sha256.clone(),
            n_layers: c.n_layers as u32,
            hidden_size: c.hidden_size as u32,
            vocab_size: c.vocab_size as u32,
            context_length: c.context_length as u32,
            active_sessions: load.sessions as u32,
            edge_layers: load.layers as u32,
        }))
    }
}

struct SessionTask {
    worker: Worker,
    metrics: Arc<EdgeMetrics>,
    model: Arc<LoadedModel>,
    shutdown: CancellationToken,
    max_message_bytes: usize,
    step_timeout: std::time::Duration,
    tx: mpsc::Sender<Reply>,
}

/// How a stream ended, which decides the session's fate.
enum End {
    /// Finished or refused: the session is gone.
    Close,
    /// The transport broke: keep the session for a resume until it idles out.
    Detach,
}

impl SessionTask {
    async fn run(self, mut inbound: Streaming<pb::UeMessage>) {
        self.metrics.stream_opened();
        let (id, end) = match self.serve(&mut inbound).await {
            Ok((id, end)) => (Some(id), end),
            Err((id, status)) => {
                if status.code() != Code::Unavailable {
                    tracing::info!(code = ?status.code(), message = status.message(), "session refused");
                }
                self.metrics.error(status.code());
                let _ = self.tx.send(Err(status)).await;
                (id, End::Close)
            }
        };
        self.metrics.stream_closed(id.as_ref().map(|i| i.to_string()).as_deref());
        if let Some(id) = id {
            match end {
                End::Close => self.worker.close(id),
                End::Detach => self.worker.detach(id),
            }
        }
    }

    async fn send(&self, id: &SessionId, msg: pb::edge_message::Kind) -> Result<(), (Option<SessionId>, Status)> {
        let msg = pb::EdgeMessage { kind: Some(msg) };
        self.metrics.message(false, msg.encoded_len());
        self.tx
            .send(Ok(msg))
            .await
            .map_err(|_| (Some(id.clone()), Status::cancelled("the UE went away")))
    }

    /// Runs the session; an error carries the session (if one was opened) and the status to end
    /// the stream with.
    async fn serve(&self, inbound: &mut Streaming<pb::UeMessage>) -> Result<(SessionId, End), (Option<SessionId>, Status)> {
        let first = tokio::time::timeout(self.step_timeout, self.next(inbound, None)).await.map_err(|_| {
            (None, Status::deadline_exceeded(format!("no open message within {} ms (EDGE_STEP_TIMEOUT_MS)", self.step_timeout.as_millis())))
        })?;
        let open = match first? {
            Some(pb::UeMessage { kind: Some(pb::ue_message::Kind::Open(open)) }) => open,
            Some(_) => return Err((None, Status::invalid_argument("the first message of a stream must be open"))),
            None => return Err((None, Status::invalid_argument("the stream ended before an open message"))),
        };
        let params = Open::try_from(open).map_err(EdgeError::from).and_then(|o| self.open_params(o)).map_err(|e| (None, Status::from(e)))?;
        let k = params.split.k();
        let (prompt_tokens, open_epoch, scoring) = (params.prompt_tokens, params.epoch, params.scoring);
        let opened = self.worker.open(params).await.map_err(|e| (None, Status::from(e)))?;
        let id = opened.id.clone();
        tracing::Span::current().record("id", tracing::field::display(&id)).record("split", k);
        tracing::info!(position = opened.position, "session open");
        self.metrics.session_split(&id.to_string(), Split { k, epoch: open_epoch });
        let c = self.model.model.config();
        let answer = Opened {
            session_id: id.to_string(),
            n_layers: c.n_layers,
            hidden_size: c.hidden_size,
            position: opened.position,
            resume_secret: opened.secret.clone(),
            // The edge's own timings of that step; the link's delays of its lost answer are
            // unknown, so they stay zero.
            last_token: opened.last_token.map(|t| Token {
                position: t.position,
                id: t.id,
                logprob: t.logprob,
                eos: t.eos,
                batch: t.batch,
                edge_queue: t.queue,
                edge_compute: t.compute,
                uplink_delay: std::time::Duration::ZERO,
                downlink_delay: std::time::Duration::ZERO,
            }),
            scoring,
        };
        self.send(&id, pb::edge_message::Kind::Opened(answer.into())).await?;
        // Whether the session has had an activation (or a migration) since it was opened: a
        // silent stream before that closes the session, after it keeps it for a resume.
        let mut started = opened.position > 0;

        let mut last_split = Split { k, epoch: open_epoch };
        loop {
            let Ok(next) = tokio::time::timeout(self.step_timeout, self.next(inbound, Some(&id))).await else {
                let ms = self.step_timeout.as_millis();
                if !started {
                    return Err((Some(id), Status::deadline_exceeded(format!("no activation within {ms} ms of open (EDGE_STEP_TIMEOUT_MS); session closed"))));
                }
                tracing::info!(timeout_ms = ms as u64, "stream silent; session kept for resume");
                let _ = self.tx.send(Err(Status::deadline_exceeded(format!("no message for {ms} ms (EDGE_STEP_TIMEOUT_MS); session kept for a resume")))).await;
                return Ok((id, End::Detach));
            };
            started = true;
            let msg = match next {
                Ok(m) => {
                    if let Some(m) = &m {
                        self.metrics.message(true, m.encoded_len());
                    }
                    m
                }
                Err((_, status)) if status.code() != Code::Unavailable && status.code() != Code::ResourceExhausted => {
                    // The transport broke (reset, cancel, connection lost) rather than the UE
                    // misbehaving or the server stopping: keep the session for a resume.
                    tracing::info!(code = ?status.code(), message = status.message(), "stream broken; session kept for resume");
                    return Ok((id, End::Detach));
                }
                Err(e) => return Err(e),
            };
            let Some(msg) = msg else { return self.ended(&id).await };
            let refused = |e: EdgeError| (Some(id.clone()), Status::from(e));
            let step = match msg.kind {
                Some(pb::ue_message::Kind::Activation(a)) => Step::try_from(a).map_err(|e| refused(e.into()))?,
                Some(pb::ue_message::Kind::Migrate(_)) if scoring => {
                    return Err((Some(id.clone()), Status::invalid_argument("a scoring session keeps its split: open another session to score at another k")));
                }
                Some(pb::ue_message::Kind::Migrate(m)) => {
                    let change = Migrate::try_from(m).map_err(|e| refused(e.into()))?;
                    let (to, position, method) = (change.to, change.position, change.method.to_string());
                    let out = self.worker.migrate(MigrateInput { session: id.clone(), change }).await.map_err(refused)?;
                    tracing::Span::current().record("split", to.k);
                    self.metrics.split_change(&method);
                    self.metrics.session_split(&id.to_string(), to);
                    last_split = to;
                    let answer = Migrated { split: to, position, kv: out.kv, edge_compute: out.compute };
                    self.send(&id, pb::edge_message::Kind::Migrated(answer.into())).await?;
                    continue;
                }
                _ => return Err((Some(id.clone()), Status::invalid_argument("only activation and migrate messages may follow open"))),
            };
            if scoring {
                let out = self.worker.score(score_input(&id, step).map_err(refused)?).await.map_err(refused)?;
                self.metrics.step(true, out.queue, out.compute, 1);
                self.send(
                    &id,
                    pb::edge_message::Kind::Scores(pb::Scores {
                        logprob: out.logprob,
                        edge_queue_us: out.queue.as_micros() as u64,
                        edge_compute_us: out.compute.as_micros() as u64,
                        // The channel emulator, which held the messages, stamps both delays.
                        uplink_delay_us: 0,
                        downlink_delay_us: 0,
                    }),
                )
                .await?;
                continue;
            }
            if !step.targets.is_empty() {
                return Err((Some(id.clone()), Status::invalid_argument("activation carries targets, but this session was opened to generate (Open.scoring is false)")));
            }
            let step = StepInput {
                session: id.clone(),
                position: step.position,
                split: step.split,
                hidden: step.hidden,
                erased: step.erased,
                enqueued: Instant::now(),
            };
            let (prefill, step_split, enqueued) = (step.position < prompt_tokens, step.split, step.enqueued);
            let out = self.worker.step(step).await.map_err(|e| (Some(id.clone()), Status::from(e)))?;
            match &out {
                Some(t) => self.metrics.step(prefill, t.queue, t.compute, t.batch),
                // A prefill chunk before the last: the worker reports no split of its time.
                None => self.metrics.step(prefill, std::time::Duration::ZERO, enqueued.elapsed(), 1),
            }
            if step_split != last_split {
                last_split = step_split;
                self.metrics.session_split(&id.to_string(), step_split);
            }
            if let Some(t) = out {
                self.metrics.token();
                tracing::debug!(position = t.position, token = t.id, compute_us = t.compute.as_micros() as u64, "step");
                let token = Token {
                    position: t.position,
                    id: t.id,
                    logprob: t.logprob,
                    eos: t.eos,
                    batch: t.batch,
                    edge_queue: t.queue,
                    edge_compute: t.compute,
                    // The channel emulator, which held the messages, stamps both delays.
                    uplink_delay: std::time::Duration::ZERO,
                    downlink_delay: std::time::Duration::ZERO,
                };
                self.send(&id, pb::edge_message::Kind::Token(token.into())).await?;
            }
        }
    }

    /// The next message, unless the server is shutting down; size-limit errors get a clear text.
    async fn next(
        &self,
        inbound: &mut Streaming<pb::UeMessage>,
        id: Option<&SessionId>,
    ) -> Result<Option<pb::UeMessage>, (Option<SessionId>, Status)> {
        let sid = id.cloned();
        tokio::select! {
            () = self.shutdown.cancelled() => Err((sid.clone(), Status::unavailable(match &sid {
                Some(id) => format!("edge server is shutting down; session {id} ended"),
                None => "edge server is shutting down".to_string(),
            }))),
            m = inbound.message() => m.map_err(|s| {
                if s.code() == Code::OutOfRange && s.message().contains("too large") {
                    (sid.clone(), Status::resource_exhausted(format!(
                        "message exceeds the edge's limit of {} bytes (EDGE_MAX_MESSAGE_BYTES): {}",
                        self.max_message_bytes,
                        s.message()
                    )))
                } else {
                    (sid.clone(), s)
                }
            }),
        }
    }

    /// The UE closed its side: fine after the last token, an error mid-prefill. If nobody is
    /// listening for our reply any more, the RPC was cancelled (a reset can reach us as a plain
    /// end of stream): that is a broken link, so the session is kept for a resume.
    async fn ended(&self, id: &SessionId) -> Result<(SessionId, End), (Option<SessionId>, Status)> {
        if self.tx.is_closed() {
            tracing::info!("UE went away; session kept for resume");
            return Ok((id.clone(), End::Detach));
        }
        let progress = self.worker.progress(id).await.map_err(|e| (Some(id.clone()), Status::from(e)))?;
        if let Some(p) = progress
            && p.position < p.prompt_tokens
        {
            return Err((
                Some(id.clone()),
                Status::invalid_argument(format!(
                    "stream ended mid-prefill: {} of {} prompt rows received",
                    p.position, p.prompt_tokens
                )),
            ));
        }
        tracing::info!("session done");
        Ok((id.clone(), End::Close))
    }

    /// What only this edge can check of an open: its model, and the split's depth in it.
    fn open_params(&self, open: Open) -> Result<OpenParams, EdgeError> {
        if open.model_sha256 != self.model.sha256 {
            return Err(EdgeError::FailedPrecondition(format!(
                "the UE runs model sha256 {:?} but this edge serves {}",
                open.model_sha256, self.model.sha256
            )));
        }
        let split = self.model.model.split_point(open.split.k)?;
        let (resume, resume_secret) = match open.resume {
            Some(r) => (Some(SessionId::parse(&r.session_id)?), r.secret),
            None => (None, String::new()),
        };
        Ok(OpenParams {
            split,
            epoch: open.split.epoch,
            sampling: open.sampling,
            max_new_tokens: open.max_new_tokens,
            ignore_eos: open.ignore_eos,
            prompt_tokens: open.prompt_tokens,
            client: open.client,
            resume,
            resume_secret,
            link: open.link,
            calibration_sha256: open.calibration_sha256,
            scoring: open.scoring,
        })
    }
}

/// A scoring session's window: position 0 (each window starts from an empty cache).
fn score_input(id: &SessionId, step: Step) -> Result<ScoreInput, EdgeError> {
    if step.position != 0 {
        return Err(EdgeError::InvalidArgument(format!("a scoring window starts at position 0 (from an empty cache), not {}", step.position)));
    }
    Ok(ScoreInput {
        session: id.clone(),
        split: step.split,
        hidden: step.hidden,
        erased: step.erased,
        targets: step.targets,
        first_row: step.first_scored_row,
        enqueued: Instant::now(),
    })
}
