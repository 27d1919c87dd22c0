//! The agent of splitinfer: watches the channel, runs a split policy and pushes split decisions
//! (`k` and an epoch) to its subscribers, the UE and the edge.
//!
//! - [`config`]: flags and `AGENT_*` environment variables.
//! - [`observation`]: the channel as a policy sees it, from the emulator's statistics.
//! - [`policy`]: the `Policy` trait and one file per policy (fixed, threshold, learned).
//! - [`state`]: the decision rules (confirmation, dwell time, overrides), epochs, subscribers,
//!   acknowledgements and history.
//! - [`stats`]: the client of the emulator's statistics stream, reconnecting with backoff.
//! - [`service`]: the `splitinfer.v1.Agent` gRPC service.
//! - [`metrics`]: the Prometheus metrics on `--metrics-listen`.
//! - [`timeline`]: the last few minutes of statistics, decisions and UE reports, for
//!   [`dashboard`], the live web page on `--dashboard-listen`.
//! - [`follow`]: the subscriber side, [`Follower`], used by the UE and the edge.
//! - [`error`]: configuration errors, and request errors with their one mapping to gRPC codes.
//! - [`run`]: serve on a bound listener until a shutdown future resolves.
//!
//! The crate stays lean (no model code) because the UE and the edge link it for the follower.

pub mod backoff;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod follow;
pub mod metrics;
pub mod observation;
pub mod policy;
pub mod service;
pub mod state;
pub mod stats;
pub mod timeline;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::agent_server::AgentServer;
use splitinfer_proto::v1::edge_client::EdgeClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use splitinfer_telemetry::Tls;

pub use config::AgentConfig;
pub use follow::Follower;
use service::AgentService;
use state::{AgentState, Rules, Shared};

/// How long open subscription streams get to close after shutdown before the server stops anyway.
const GRACE: Duration = Duration::from_secs(5);

/// Serves the agent on `listener` until `shutdown` resolves. Without `--n-layers` it first asks
/// the edge for the model's layer count (retrying until it answers or `shutdown`).
pub async fn run(listener: TcpListener, config: AgentConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    config.validate()?;
    let tls = Tls::load(&config.tls)?;
    let token = CancellationToken::new();
    {
        let token = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            token.cancel();
        });
    }
    let _cancel_on_return = token.clone().drop_guard();
    let n_layers = match config.n_layers {
        Some(n) => n,
        None => match n_layers_from_edge(&config.edge, &tls, &token).await {
            Some(n) => n,
            None => return Ok(()),
        },
    };
    let policy = config.policy(n_layers)?;
    tracing::info!(policy = policy.name(), params = ?policy.params(), n_layers, min_dwell_ms = config.min_dwell_ms, confirm = config.confirm, "policy");
    let rules = Rules { min_dwell: config.min_dwell(), confirm: config.confirm };
    let state = Arc::new(Shared::new(AgentState::new(policy, n_layers, rules, config.history)));
    let stats = tokio::spawn(stats::watch(config.emulator.clone(), tls.clone(), config.stats_period_ms, state.clone(), token.clone()));
    let metrics_state = state.clone();
    splitinfer_telemetry::metrics::start(config.metrics_listen, Arc::new(move || metrics::render(&metrics_state)), token.clone()).await?;
    if let Some(addr) = config.dashboard_listen {
        dashboard::start(addr, state.clone(), token.clone()).await.with_context(|| format!("cannot serve the dashboard on {addr}"))?;
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServer<AgentService>>().await;
    let (reflection_v1, reflection_v1alpha) = splitinfer_proto::reflection_services(&["splitinfer.v1.Agent"])?;
    let control_token = config.control_token.clone().filter(|t| !t.is_empty());
    if control_token.is_none() {
        tracing::info!("no control token: Override is disabled (set --control-token or AGENT_CONTROL_TOKEN)");
    }
    let agent = AgentServer::new(AgentService { state, control_token, shutdown: token.clone() });

    tracing::info!(addr = %listener.local_addr()?, emulator = %config.emulator, "agent listening");
    splitinfer_telemetry::warn_if_exposed("the agent", listener.local_addr()?, &tls);
    let stop = token.clone();
    let server = tls
        .server(tonic::transport::Server::builder())?
        // Finds subscribers that vanished without closing their connection.
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(agent)
        .serve_with_incoming_shutdown(splitinfer_telemetry::incoming(listener), async move { stop.cancelled().await });
    let watchdog = {
        let token = token.clone();
        async move {
            token.cancelled().await;
            tokio::time::sleep(GRACE).await;
        }
    };
    tokio::select! {
        r = server => r?,
        () = watchdog => tracing::warn!(grace_ms = GRACE.as_millis() as u64, "grace period over with streams still open; exiting"),
    }
    token.cancel();
    let _ = stats.await;
    tracing::info!("agent stopped");
    Ok(())
}

/// The model's decoder layer count from the edge's `Info`, retrying with backoff; `None` if
/// `shutdown` came first.
async fn n_layers_from_edge(url: &str, tls: &Tls, shutdown: &CancellationToken) -> Option<u32> {
    tracing::info!(edge = url, "--n-layers not given; asking the edge for the model's layer count");
    let endpoint = tls.endpoint(url).ok()?.connect_timeout(Duration::from_secs(2));
    let mut backoff = backoff::Backoff::new();
    let mut attempts = 0u32;
    loop {
        let attempt = async {
            let channel = endpoint.connect().await.map_err(|e| format!("cannot connect: {e}"))?;
            let info = EdgeClient::new(channel).info(pb::InfoRequest {}).await.map_err(|s| format!("Info failed: {}", s.message()))?.into_inner();
            match info.n_layers {
                0 => Err("the edge reported 0 layers".to_string()),
                n => Ok((n, info.model_name)),
            }
        };
        let result = tokio::select! {
            () = shutdown.cancelled() => return None,
            r = tokio::time::timeout(Duration::from_secs(10), attempt) => r.unwrap_or_else(|_| Err("Info timed out".into())),
        };
        match result {
            Ok((n, model)) => {
                tracing::info!(edge = url, n_layers = n, model = %model, "layer count from the edge");
                return Some(n);
            }
            Err(why) => {
                attempts += 1;
                if attempts == 1 {
                    tracing::warn!(edge = url, reason = %why, "the edge does not answer yet; retrying with backoff");
                } else {
                    tracing::debug!(edge = url, reason = %why, attempts, "edge retry failed");
                }
            }
        }
        if !backoff.wait(shutdown).await {
            return None;
        }
    }
}
