//! The edge server of splitinfer.
//!
//! - [`config`]: flags and `EDGE_*` environment variables.
//! - [`worker`]: the model worker thread that owns every session's KV caches (layers `k..L`) and
//!   runs the layers, the head and sampling, off the async runtime.
//! - [`service`]: the `splitinfer.v1.Edge` gRPC service, one task per session stream.
//! - [`error`]: session errors and their one mapping to gRPC status codes.
//! - [`metrics`]: the Prometheus metrics served on `--metrics-listen`.
//! - [`run`]: serve on a bound listener until a shutdown future resolves, then end open sessions
//!   with `UNAVAILABLE` and drain within the grace period.

pub mod config;
pub mod error;
pub mod metrics;
pub mod service;
pub mod worker;

use std::future::Future;
use std::sync::Arc;

use split_core::bundle::LoadedModel;
use splitinfer_proto::v1::edge_server::EdgeServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::EdgeConfig;
use metrics::EdgeMetrics;
use service::EdgeService;
use worker::Worker;

/// Serves the edge on `listener` until `shutdown` resolves; metrics on `--metrics-listen` if set.
pub async fn run(
    listener: TcpListener,
    config: EdgeConfig,
    model: Arc<LoadedModel>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    run_with_metrics(listener, metrics, config, model, shutdown).await
}

/// [`run`] with an already-bound metrics listener (tests bind 127.0.0.1:0).
pub async fn run_with_metrics(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: EdgeConfig,
    model: Arc<LoadedModel>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        model.model.kv_dtype() == config.kv_cache,
        "the model was loaded with a {:?} KV cache but the configuration asks for {:?} (set it with SplitModel::set_kv_dtype before serving)",
        model.model.kv_dtype(),
        config.kv_cache
    );
    let token = CancellationToken::new();
    let metrics = EdgeMetrics::new();
    if let Some(l) = metrics_listener {
        tracing::info!(addr = %l.local_addr()?, "metrics listening");
        let m = metrics.clone();
        tokio::spawn(splitinfer_telemetry::metrics::serve(l, Arc::new(move || m.text()), token.clone()));
    }
    let calibration = match &config.calibration {
        Some(path) => {
            let c = split_core::calibration::Calibration::load(path, Some(&model.sha256))?;
            tracing::info!(path = %path.display(), sha256 = %c.file_sha256, text = %c.text, "calibration loaded");
            Some(Arc::new(c))
        }
        None => None,
    };
    let worker = Worker::start(
        model.clone(),
        worker::WorkerOptions {
            max_sessions: config.max_sessions,
            max_batch: worker::MAX_DRAIN,
            calibration,
            prefill_chunk_rows: config.prefill_chunk_rows,
            prefill_share: config.prefill_share,
            kv_budget_mib: config.kv_budget_mib,
        },
    )?;
    let addr = listener.local_addr()?;

    let expiry = {
        let (worker, token, idle) = (worker.clone(), token.clone(), config.idle_timeout());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((idle / 4).max(std::time::Duration::from_millis(10)));
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => worker.expire(idle),
                }
            }
        })
    };

    let tls = splitinfer_telemetry::Tls::load(&config.tls)?;
    if let Some(url) = &config.agent {
        follow_agent(url.clone(), tls.clone(), config.name.clone(), model.model.n_layers(), metrics.clone(), token.clone());
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<EdgeServer<EdgeService>>().await;
    let (reflection, reflection_v1alpha) = splitinfer_proto::reflection_services(&["splitinfer.v1.Edge"])?;
    let edge = EdgeServer::new(EdgeService {
        worker,
        metrics,
        model,
        shutdown: token.clone(),
        max_message_bytes: config.max_message_bytes,
        step_timeout: config.step_timeout(),
    })
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes);

    tracing::info!(%addr, "edge server listening");
    splitinfer_telemetry::warn_if_exposed("the edge server", addr, &tls);
    let stop = token.clone();
    let server = tls
        .server(tonic::transport::Server::builder())?
        // Finds UEs that vanished without a reset (a radio link that just stops), so their
        // sessions detach and can expire.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(edge)
        .serve_with_incoming_shutdown(splitinfer_telemetry::incoming(listener), async move {
            shutdown.await;
            // Ends every open session with UNAVAILABLE so their streams, and then the server, finish.
            stop.cancel();
        });
    splitinfer_telemetry::serve_with_grace(server, &token, config.grace_period()).await?;
    token.cancel();
    let _ = expiry.await;
    tracing::info!("edge server stopped");
    Ok(())
}

/// Subscribes to the agent and acknowledges every decision the edge can serve (k within 0..=L):
/// sessions move when their UE migrates, so being ready is all the edge has to apply. The
/// follower reconnects by itself; while the agent is gone, nothing changes here.
fn follow_agent(url: String, tls: splitinfer_telemetry::Tls, name: String, n_layers: usize, metrics: Arc<EdgeMetrics>, token: CancellationToken) {
    let follower = agent::follow::Follower::spawn_tls(url, tls, name, splitinfer_proto::v1::Role::Edge, token.clone());
    let mut decisions = follower.decisions();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                r = decisions.changed() => if r.is_err() { break },
            }
            let Some(split) = decisions.borrow_and_update().as_ref().and_then(|d| d.split) else { continue };
            if split.k as usize > n_layers {
                tracing::warn!(k = split.k, epoch = split.epoch, n_layers, "the agent decided a split outside 0..=L; not acknowledged");
                continue;
            }
            follower.ack(split.epoch, split.k);
            metrics.agent_epoch(split.epoch);
        }
    });
}
