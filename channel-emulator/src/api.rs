//! The `splitinfer.v1.Emulator` service (statistics for the agent, runtime control) and the
//! Prometheus text endpoint.

use std::sync::Arc;
use std::time::Duration;

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
        let req = request.into_inner();
        let trace = crate::control::trace_for(
            (!req.trace_path.is_empty()).then(|| std::path::Path::new(&req.trace_path)),
            (!req.mobility.is_empty()).then_some(req.mobility.as_str()),
            self.seed,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
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
