//! The UE of splitinfer.
//!
//! - [`config`]: flags and `UE_*` environment variables.
//! - [`generate`]: one generation session over a gRPC stream: prefill and then one step per
//!   token through layers `0..k` here (on a blocking thread, off the async runtime), the hidden
//!   state to the edge, token ids back; per-token timings and bytes.
//! - [`report`]: the per-token timing breakdown and its summary.

pub mod config;
pub mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use split_core::bundle::LoadedModel;
use split_core::model::KvCache;
use split_core::sampling::SamplingConfig;
use split_core::split::SplitPoint;
use split_core::wire::{WireDType, WireTensor};
use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::edge_client::EdgeClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

pub use config::UeConfig;
pub use report::{GenerationReport, TokenEvent};

#[derive(Debug, thiserror::Error)]
pub enum UeError {
    #[error("cannot connect to the edge at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the edge ended the session: {}: {}", .0.code(), .0.message())]
    Edge(tonic::Status),
    #[error("protocol error: {0}")]
    Protocol(String),
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
}

/// What to generate and how.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub split: SplitPoint,
    pub wire: WireDType,
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Rows per prefill message; 0 sends the prompt in one message.
    pub prefill_chunk: usize,
    pub client: String,
}

/// Connects to an edge (or emulator) with raised message limits.
pub async fn connect(url: &str, max_message_bytes: usize, timeout: Duration) -> Result<EdgeClient<Channel>, UeError> {
    let err = |reason: String| UeError::Connect { url: url.to_string(), reason };
    let channel = Endpoint::from_shared(url.to_string())
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| err(format!("{e} ({})", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default())))?;
    Ok(EdgeClient::new(channel).max_decoding_message_size(max_message_bytes).max_encoding_message_size(max_message_bytes))
}

/// The UE's side of the model: layers `0..k` and their caches.
struct UeModel {
    model: Arc<LoadedModel>,
    cache: KvCache,
}

impl UeModel {
    /// Embeds `tokens`, runs the UE's layers and encodes the result for the wire.
    fn step(&mut self, tokens: &[u32], wire: WireDType) -> split_core::Result<WireTensor> {
        let m = &self.model.model;
        let h = m.embed(tokens)?;
        let h = m.run_layers(&h, &mut self.cache)?;
        WireTensor::from_tensor(&h, wire)
    }
}

/// Runs a UE step on a blocking thread, handing the caches there and back.
async fn ue_step(state: UeModel, tokens: Vec<u32>, wire: WireDType) -> Result<(UeModel, WireTensor, Duration), UeError> {
    tokio::task::spawn_blocking(move || {
        let mut state = state;
        let t = Instant::now();
        let r = state.step(&tokens, wire);
        (state, r, t.elapsed())
    })
    .await
    .map_err(|e| UeError::Protocol(format!("UE model task failed: {e}")))
    .and_then(|(s, r, d)| Ok((s, r?, d)))
}

async fn next(inbound: &mut tonic::Streaming<pb::EdgeMessage>) -> Result<pb::edge_message::Kind, UeError> {
    match inbound.message().await {
        Ok(Some(m)) => m.kind.ok_or_else(|| UeError::Protocol("empty message from the edge".into())),
        Ok(None) => Err(UeError::Protocol("the edge closed the stream without a status".into())),
        Err(s) => Err(UeError::Edge(s)),
    }
}

/// One generation session over `client`. `on_token` sees every token as it arrives.
pub async fn generate(
    client: &mut EdgeClient<Channel>,
    model: Arc<LoadedModel>,
    req: GenerateRequest,
    mut on_token: impl FnMut(&TokenEvent),
) -> Result<GenerationReport, UeError> {
    if req.prompt.is_empty() {
        return Err(UeError::Protocol("the prompt has no tokens".into()));
    }
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<pb::UeMessage>(8);
    let split = pb::Split { k: req.split.k() as u32, epoch: 0 };
    let open = pb::UeMessage {
        kind: Some(pb::ue_message::Kind::Open(pb::Open {
            model_sha256: model.sha256.clone(),
            split: Some(split),
            sampling: Some(req.sampling.into()),
            max_new_tokens: req.max_new_tokens as u32,
            prompt_tokens: req.prompt.len() as u32,
            client: req.client.clone(),
            resume_session_id: String::new(),
        })),
    };
    let mut bytes_up = open.encoded_len() as u64;
    let send = |msg: pb::UeMessage| {
        let tx = tx.clone();
        async move { tx.send(msg).await.map_err(|_| UeError::Protocol("the request stream closed early".into())) }
    };
    send(open).await?;
    let mut inbound = client.generate(ReceiverStream::new(rx)).await.map_err(UeError::Edge)?.into_inner();

    let session_id = match next(&mut inbound).await? {
        pb::edge_message::Kind::Opened(o) => o.session_id,
        other => return Err(UeError::Protocol(format!("expected opened, got {other:?}"))),
    };
    tracing::info!(session = %session_id, split = req.split.k(), "session open");

    let mut state = UeModel { model: model.clone(), cache: KvCache::new(req.split.ue_layers()) };
    let mut tokens: Vec<TokenEvent> = Vec::with_capacity(req.max_new_tokens);
    let mut input: Vec<u32> = req.prompt.clone();
    let chunk = if req.prefill_chunk == 0 { usize::MAX } else { req.prefill_chunk };
    let mut stop_eos = false;
    while tokens.len() < req.max_new_tokens {
        // Prefill goes out in chunks; each decode step is one row.
        let mut ue_compute = Duration::ZERO;
        let mut step_bytes = 0u64;
        let mut sent_at = Instant::now();
        for rows in input.chunks(chunk) {
            let position = state.cache.position() as u64;
            let (s, wire, took) = ue_step(state, rows.to_vec(), req.wire).await?;
            state = s;
            ue_compute += took;
            let msg = pb::UeMessage {
                kind: Some(pb::ue_message::Kind::Activation(pb::Activation {
                    position,
                    split: Some(split),
                    hidden: Some(wire.into()),
                    ue_compute_us: took.as_micros() as u64,
                    erasure_mask: Default::default(),
                })),
            };
            step_bytes += msg.encoded_len() as u64;
            sent_at = Instant::now();
            send(msg).await?;
        }
        bytes_up += step_bytes;
        let t = match next(&mut inbound).await? {
            pb::edge_message::Kind::Token(t) => t,
            other => return Err(UeError::Protocol(format!("expected a token, got {other:?}"))),
        };
        let rtt = sent_at.elapsed();
        let edge = Duration::from_micros(t.edge_queue_us + t.edge_compute_us);
        let event = TokenEvent {
            id: t.id,
            logprob: t.logprob,
            rows: input.len(),
            ue_compute_us: ue_compute.as_micros() as u64,
            network_us: rtt.saturating_sub(edge).as_micros() as u64,
            edge_queue_us: t.edge_queue_us,
            edge_compute_us: t.edge_compute_us,
            bytes_up: step_bytes,
        };
        on_token(&event);
        tokens.push(event);
        if t.eos {
            stop_eos = true;
            break;
        }
        input = vec![t.id];
    }
    drop(tx);
    // The edge ends the stream once we close ours; wait for it so a late error is not lost.
    match inbound.message().await {
        Ok(None) | Ok(Some(_)) => {}
        Err(s) => return Err(UeError::Edge(s)),
    }
    Ok(GenerationReport {
        session_id,
        split: req.split.k(),
        wire: req.wire.to_string(),
        prompt_tokens: req.prompt.len(),
        tokens,
        stopped_at_eos: stop_eos,
        bytes_up,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}
