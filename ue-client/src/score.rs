//! Teacher-forced scoring through the networked pipeline: the UE runs layers `0..k` on windows
//! of a given text and sends each window's hidden state (with the text's next tokens) through
//! the emulator to the edge, which returns the log-probability of every next token
//! (`Open.scoring`, `Scores`). The windows are `splitinfer ppl`'s (`split_core::perplexity`), so
//! the perplexity measured through the real processes and the real channel is comparable with
//! the in-process one; on a clean f32 link it is the same number.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use split_core::bundle::LoadedModel;
use split_core::calibration::Calibration;
use split_core::model::KvCache;
use split_core::perplexity::{PplConfig, window_nll, windows};
use split_core::split::{Epoch, Split, SplitPoint};
use split_core::transform::LinkSetup;
use splitinfer_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::UeError;

/// What to score, and how the hidden state is sent.
#[derive(Debug, Clone)]
pub struct ScoreRequest {
    pub tokens: Vec<u32>,
    pub split: SplitPoint,
    pub ppl: PplConfig,
    pub link: LinkSetup,
    /// Statistics for a normalization or concealment that needs them (the edge must hold the
    /// same file).
    pub calibration: Option<Arc<Calibration>>,
    pub client: String,
    /// How long to wait for the edge's answer to one window.
    pub window_timeout: Duration,
}

/// What the scoring measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScoreReport {
    pub k: usize,
    pub ppl: f64,
    pub mean_nll: f64,
    pub scored_tokens: usize,
    pub windows: usize,
    pub seconds: f64,
    /// Summed over the windows: the UE's layers, the uplink air time the emulator held the
    /// windows for (0 without one), and the edge's layers and head.
    pub ue_compute_ms: f64,
    pub uplink_ms: f64,
    pub edge_compute_ms: f64,
    pub bytes_up: u64,
}

/// Scores `req.tokens` through the edge (or an emulator in front of it) at `client`.
pub async fn score(
    client: &mut splitinfer_proto::v1::edge_client::EdgeClient<tonic::transport::Channel>,
    model: Arc<LoadedModel>,
    req: &ScoreRequest,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<ScoreReport, UeError> {
    req.ppl.validate(model.model.config().context_length)?;
    let plan = windows(req.tokens.len(), req.ppl)?;
    let k = req.split.k();
    let stats = match &req.calibration {
        Some(c) if req.link.needs_calibration() => Some(c.boundary(k).map_err(split_core::Error::from)?.clone()),
        Some(_) => None,
        None if req.link.needs_calibration() => {
            return Err(UeError::Protocol(format!(
                "normalization {} / concealment {} need calibration statistics (--calibration FILE)",
                req.link.normalization, req.link.concealment
            )));
        }
        None => None,
    };
    let started = Instant::now();
    let split = Split { k, epoch: Epoch(0) };
    let (tx, rx) = mpsc::channel::<pb::UeMessage>(2);
    let open = pb::UeMessage {
        kind: Some(pb::ue_message::Kind::Open(pb::Open {
            model_sha256: model.sha256.clone(),
            split: Some(split.into()),
            client: req.client.clone(),
            normalization: pb::Normalization::from(req.link.normalization) as i32,
            concealment: pb::Concealment::from(req.link.concealment) as i32,
            calibration_sha256: req.calibration.as_ref().map(|c| c.file_sha256.clone()).unwrap_or_default(),
            scoring: true,
            ..Default::default()
        })),
    };
    let mut bytes_up = open.encoded_len() as u64;
    tx.send(open).await.map_err(|_| UeError::Link("the request stream closed early".into()))?;
    let mut inbound = client.generate(ReceiverStream::new(rx)).await.map_err(UeError::Edge)?.into_inner();
    let timeout = req.window_timeout;
    let mut next = async move || -> Result<pb::edge_message::Kind, UeError> {
        match tokio::time::timeout(timeout, inbound.message()).await {
            Err(_) => Err(UeError::Link(format!("no answer from the edge for {} ms", timeout.as_millis()))),
            Ok(Err(status)) => Err(UeError::Edge(status)),
            Ok(Ok(None)) => Err(UeError::Link("the edge closed the stream".into())),
            Ok(Ok(Some(pb::EdgeMessage { kind: Some(kind) }))) => Ok(kind),
            Ok(Ok(Some(_))) => Err(UeError::Protocol("an edge message without a kind".into())),
        }
    };
    match next().await? {
        pb::edge_message::Kind::Opened(o) if o.scoring => {}
        pb::edge_message::Kind::Opened(_) => {
            return Err(UeError::Protocol("the edge does not support scoring (its Opened has scoring unset: it predates Open.scoring)".into()));
        }
        other => return Err(UeError::Protocol(format!("expected opened, got {other:?}"))),
    }
    let (mut nll, mut scored) = (0f64, 0usize);
    let (mut ue_compute, mut uplink_us, mut edge_us) = (Duration::ZERO, 0u64, 0u64);
    for (w, win) in plan.iter().enumerate() {
        let (m, tokens, setup, stats) = (model.clone(), req.tokens[win.begin..win.end].to_vec(), req.link, stats.clone());
        let layers = req.split.ue_layers();
        let t0 = Instant::now();
        let hidden = tokio::task::spawn_blocking(move || -> split_core::Result<_> {
            let h = m.model.embed(&tokens)?;
            let h = m.model.run_layers(&h, &mut KvCache::new(layers))?;
            let shape = h.dims().to_vec();
            let values = h.flatten_all()?.to_vec1::<f32>()?;
            Ok(setup.encode(shape, &values, stats.as_ref(), 0)?)
        })
        .await
        .map_err(|e| UeError::Protocol(format!("the UE's layers panicked: {e}")))??;
        ue_compute += t0.elapsed();
        let targets = req.tokens[win.first_target..win.end].to_vec();
        let n = targets.len();
        let msg = pb::UeMessage {
            kind: Some(pb::ue_message::Kind::Activation(pb::Activation {
                position: 0,
                split: Some(split.into()),
                hidden: Some(hidden.into()),
                ue_compute_us: t0.elapsed().as_micros() as u64,
                targets,
                first_scored_row: (win.first_target - 1 - win.begin) as u32,
                ..Default::default()
            })),
        };
        bytes_up += msg.encoded_len() as u64;
        tx.send(msg).await.map_err(|_| UeError::Link("the request stream closed early".into()))?;
        let scores = match next().await? {
            pb::edge_message::Kind::Scores(s) => s,
            other => return Err(UeError::Protocol(format!("expected scores, got {other:?}"))),
        };
        if scores.logprob.len() != n {
            return Err(UeError::Protocol(format!("the edge scored {} of the window's {n} targets", scores.logprob.len())));
        }
        nll += window_nll(&scores.logprob);
        scored += n;
        uplink_us += scores.uplink_delay_us;
        edge_us += scores.edge_compute_us;
        progress(w + 1, plan.len());
    }
    drop(tx);
    let mean_nll = nll / scored as f64;
    Ok(ScoreReport {
        k,
        ppl: mean_nll.exp(),
        mean_nll,
        scored_tokens: scored,
        windows: plan.len(),
        seconds: started.elapsed().as_secs_f64(),
        ue_compute_ms: ue_compute.as_secs_f64() * 1e3,
        uplink_ms: uplink_us as f64 / 1e3,
        edge_compute_ms: edge_us as f64 / 1e3,
        bytes_up,
    })
}
