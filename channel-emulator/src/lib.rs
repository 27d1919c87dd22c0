//! The channel emulator of splitinfer: a message-aware gRPC proxy.
//!
//! - [`config`]: flags and `EMU_*` environment variables.
//! - [`service`]: serves the edge's API, opens a stream to the real edge per session and relays
//!   both ways, including the edge's final status.
//! - [`hold`]: holds a message for its air time on a `timerfd` in tokio's reactor, precise to
//!   tens of microseconds without a thread hand-off.
//! - [`link`]: what happens to each activation in flight; the proxy decodes it into a tensor and
//!   passes it to the uplink: the clean link changes no byte; with `--channel` the shared channel
//!   models (fading, noise, loss, erasure, air time) act on it, seeded per session.
//! - [`control`] and [`api`]: the current channel (switchable at run time through the
//!   `splitinfer.v1.Emulator` service, which also streams statistics for the agent) and the
//!   Prometheus text endpoint.
//! - [`run`]: serve on a bound listener until a shutdown future resolves.

pub mod api;
pub mod channel_args;
pub mod config;
pub mod control;
pub mod hold;
pub mod link;
pub mod service;

use std::future::Future;

use splitinfer_proto::v1::edge_client::EdgeClient;
use splitinfer_proto::v1::edge_server::EdgeServer;
use splitinfer_proto::v1::emulator_server::EmulatorServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::EmulatorConfig;
use service::Proxy;

pub async fn run(
    listener: TcpListener,
    config: EmulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    run_with_metrics(listener, metrics, config, shutdown).await
}

/// [`run`] with an already-bound metrics listener (tests bind 127.0.0.1:0).
pub async fn run_with_metrics(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    config: EmulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    // Connect lazily: the emulator may start before the edge, and reconnects if the edge restarts.
    let tls = splitinfer_telemetry::Tls::load(&config.tls)?;
    let channel = tls.endpoint(&config.edge).map_err(|e| anyhow::anyhow!("--edge: {e}"))?.tcp_nodelay(true).connect_lazy();
    let upstream = EdgeClient::new(channel)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<EdgeServer<Proxy>>().await;
    let (reflection, reflection_v1alpha) = splitinfer_proto::reflection_services(&["splitinfer.v1.Edge", "splitinfer.v1.Emulator"])?;
    // The flags are checked even without --channel: SetChannel may turn them on later.
    let base = config.channel_args.to_config()?;
    tracing::info!(impaired = config.channel, channel = ?base, seed = config.channel_args.channel_seed, "link");
    let trace = control::trace_for(config.trace.as_deref(), config.mobility.as_deref(), config.channel_args.channel_seed)?;
    if trace.is_some() && config.alternate_ms > 0 {
        anyhow::bail!("choose one time-varying scenario: --alternate-ms, --trace or --mobility");
    }
    let shared = std::sync::Arc::new(control::Shared::new(
        base,
        config.channel || config.alternate_ms > 0 || trace.is_some(),
        config.channel_args.preset.name(),
        config.stats_window,
    ));
    if config.alternate_ms > 0 {
        control::start_alternating(shared.clone(), std::time::Duration::from_millis(config.alternate_ms), token.clone())?;
    }
    if let Some((name, trace)) = trace {
        tracing::info!(scenario = %name, points = trace.points.len(), "replaying channel trace");
        control::start_replay(shared.clone(), name, trace, &token);
    }
    if let Some(l) = metrics {
        tracing::info!(addr = %l.local_addr()?, "metrics listening");
        tokio::spawn(api::serve_metrics(l, shared.clone(), token.clone()));
    }
    let control_token = config.control_token.clone().filter(|t| !t.is_empty());
    if control_token.is_none() {
        tracing::info!("no control token: SetChannel is refused (--control-token / EMU_CONTROL_TOKEN enables it)");
    }
    let emulator_api = EmulatorServer::new(api::EmulatorApi {
        shared: shared.clone(),
        shutdown: token.clone(),
        seed: config.channel_args.channel_seed,
        control_token,
        trace_dir: config.trace_dir.clone(),
    });
    health.set_serving::<EmulatorServer<api::EmulatorApi>>().await;
    let proxy = EdgeServer::new(Proxy {
        upstream,
        shutdown: token.clone(),
        shared,
        seed: config.channel_args.channel_seed,
        sessions: std::sync::atomic::AtomicU64::new(0),
        max_message_bytes: config.max_message_bytes,
        active: Default::default(),
        shared_uplink: config.shared_uplink,
    })
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    tracing::info!(addr = %listener.local_addr()?, edge = %config.edge, "channel emulator listening");
    splitinfer_telemetry::warn_if_exposed("the channel emulator", listener.local_addr()?, &tls);
    let stop = token.clone();
    let server = tls
        .server(tonic::transport::Server::builder())?
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(proxy)
        .add_service(emulator_api)
        .serve_with_incoming_shutdown(splitinfer_telemetry::incoming(listener), async move {
            shutdown.await;
            stop.cancel();
        });
    // Relayed streams end with UNAVAILABLE at shutdown, but a peer that vanished (its host gone)
    // never closes its connection: after the grace period the emulator exits anyway.
    splitinfer_telemetry::serve_with_grace(server, &token, std::time::Duration::from_millis(config.grace_period_ms)).await?;
    token.cancel();
    tracing::info!("channel emulator stopped");
    Ok(())
}
