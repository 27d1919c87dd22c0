//! The channel emulator of splitinfer: a message-aware gRPC proxy.
//!
//! - [`config`]: flags and `EMU_*` environment variables.
//! - [`service`]: serves the edge's API, opens a stream to the real edge per session and relays
//!   both ways, including the edge's final status.
//! - [`link`]: what happens to each activation in flight; the proxy decodes it into a tensor and
//!   passes it to the uplink: the clean link changes no byte; with `--channel` the shared channel
//!   models (fading, noise, loss, erasure, air time) act on it, seeded per session.
//! - [`run`]: serve on a bound listener until a shutdown future resolves.

pub mod config;
pub mod link;
pub mod service;

use std::future::Future;

use splitinfer_proto::v1::FILE_DESCRIPTOR_SET;
use splitinfer_proto::v1::edge_client::EdgeClient;
use splitinfer_proto::v1::edge_server::EdgeServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

pub use config::EmulatorConfig;
use service::Proxy;

pub async fn run(
    listener: TcpListener,
    config: EmulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    // Connect lazily: the emulator may start before the edge, and reconnects if the edge restarts.
    let channel = Endpoint::from_shared(config.edge.clone())?.tcp_nodelay(true).connect_lazy();
    let upstream = EdgeClient::new(channel)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<EdgeServer<Proxy>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let channel = if config.channel { Some(config.channel_args.to_config()?) } else { None };
    tracing::info!(channel = ?channel, seed = config.channel_args.channel_seed, "link");
    let proxy = EdgeServer::new(Proxy {
        upstream,
        shutdown: token.clone(),
        channel,
        seed: config.channel_args.channel_seed,
        sessions: std::sync::atomic::AtomicU64::new(0),
    })
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    tracing::info!(addr = %listener.local_addr()?, edge = %config.edge, "channel emulator listening");
    let stop = token.clone();
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(proxy)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.await;
            stop.cancel();
        })
        .await?;
    tracing::info!("channel emulator stopped");
    Ok(())
}
