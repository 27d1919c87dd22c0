//! The `splitinfer.v1.Emulator` service (statistics for the agent, runtime control) and the
//! Prometheus text endpoint.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use splitinfer_link::channel::trace::Trace;
use splitinfer_telemetry::auth::ControlToken;

use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::emulator_server::Emulator;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::control::{Shared, prometheus};

pub struct EmulatorApi {
    pub(crate) shared: Arc<Shared>,
    pub(crate) shutdown: CancellationToken,
    /// Seed of generated mobility traces.
    pub(crate) seed: u64,
    /// `None`: SetChannel is refused.
    pub(crate) control_token: Option<ControlToken>,
    /// Where SetChannel's `trace_path` names traces; `None`: traces are refused.
    pub(crate) trace_dir: Option<PathBuf>,
}

/// Largest trace file SetChannel reads (a day at 100 ms steps is about 20 MB; the shipped traces
/// are a few kB).
pub const MAX_TRACE_BYTES: u64 = 32 << 20;

/// Reads the trace `name` from `dir` off the runtime: `name` must be a relative path inside `dir`
/// (no `..`, no root, no symlink out of it) to a regular file of at most [`MAX_TRACE_BYTES`].
/// Errors name the trace as the caller gave it and never quote the file.
async fn load_trace(dir: Option<&Path>, name: &str) -> Result<Trace, Status> {
    let Some(dir) = dir else {
        return Err(Status::failed_precondition(
            "SetChannel names traces inside the emulator's --trace-dir (EMU_TRACE_DIR), and this emulator has none",
        ));
    };
    let shown: String = name.chars().take(200).collect();
    let rel = Path::new(name);
    if name.len() > 1024 || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Status::invalid_argument(format!(
            "trace_path {shown:?} must be a relative path inside the trace directory, without `..`"
        )));
    }
    let (dir, rel, shown2) = (dir.to_path_buf(), rel.to_path_buf(), shown.clone());
    let read = tokio::task::spawn_blocking(move || -> Result<String, Status> {
        let not_found = || Status::not_found(format!("no trace {shown2:?} in the trace directory"));
        let root = dir.canonicalize().map_err(|e| Status::failed_precondition(format!("the trace directory cannot be read: {}", e.kind())))?;
        let path = root.join(&rel).canonicalize().map_err(|_| not_found())?;
        if !path.starts_with(&root) {
            return Err(not_found());
        }
        let file = std::fs::File::open(&path).map_err(|_| not_found())?;
        let meta = file.metadata().map_err(|_| not_found())?;
        if !meta.is_file() {
            return Err(Status::invalid_argument(format!("trace {shown2:?} is not a regular file")));
        }
        if meta.len() > MAX_TRACE_BYTES {
            return Err(Status::invalid_argument(format!("trace {shown2:?} is {} bytes; at most {MAX_TRACE_BYTES}", meta.len())));
        }
        let mut text = String::new();
        file.take(MAX_TRACE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|_| Status::invalid_argument(format!("trace {shown2:?} is not UTF-8 text")))?;
        Ok(text)
    });
    let text = read.await.map_err(|e| Status::internal(format!("trace reader failed: {e}")))??;
    Trace::parse(&text).map_err(|e| Status::invalid_argument(format!("trace {shown:?}: {e}")))
}

#[tonic::async_trait]
impl Emulator for EmulatorApi {
    type WatchStatsStream = ReceiverStream<Result<pb::ChannelStats, Status>>;

    async fn watch_stats(&self, request: Request<pb::WatchStatsRequest>) -> Result<Response<Self::WatchStatsStream>, Status> {
        let period = match request.into_inner().period_ms {
            0 => Duration::from_millis(500),
            ms => Duration::from_millis(u64::from(ms).max(10)),
        };
        let (tx, rx) = mpsc::channel(4);
        let (shared, shutdown) = (self.shared.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        if tx.send(Ok(shared.stats())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_stats(&self, _: Request<pb::GetStatsRequest>) -> Result<Response<pb::ChannelStats>, Status> {
        Ok(Response::new(self.shared.stats()))
    }

    async fn set_channel(&self, request: Request<pb::SetChannelRequest>) -> Result<Response<pb::SetChannelResponse>, Status> {
        splitinfer_telemetry::auth::check(self.control_token.as_ref(), request.metadata())
            .map_err(|d| d.status("SetChannel", "--control-token (EMU_CONTROL_TOKEN)"))?;
        let req = request.into_inner();
        // Everything is checked before anything changes: a refused call leaves a running replay,
        // the channel and the version as they were.
        let trace = match (req.trace_path.is_empty(), req.mobility.is_empty()) {
            (false, false) => return Err(Status::invalid_argument("give a trace or a mobility scenario, not both")),
            (false, true) => Some((format!("trace {}", req.trace_path), load_trace(self.trace_dir.as_deref(), &req.trace_path).await?)),
            (true, false) => crate::control::trace_for(None, Some(&req.mobility), self.seed).map_err(|e| Status::invalid_argument(e.to_string()))?,
            (true, true) => None,
        };
        self.shared.set(&req).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some((name, trace)) = trace {
            crate::control::start_replay(self.shared.clone(), name, trace, &self.shutdown);
        }
        let stats = self.shared.stats();
        tracing::info!(scenario = %stats.scenario, paused = stats.paused, version = stats.channel_version, "channel changed");
        Ok(Response::new(pb::SetChannelResponse { stats: Some(stats) }))
    }
}

/// Serves the statistics and the proxy's own latencies as Prometheus (OpenMetrics) text until
/// shutdown.
pub async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let render = Arc::new(move || prometheus(&shared.stats(), &shared.relay));
    splitinfer_telemetry::metrics::serve(listener, render, shutdown).await;
}
