//! What every splitinfer process shares and that has nothing to do with the model: the logging
//! setup, the shutdown signal, and the Prometheus text endpoint ([`metrics`]). Lean on purpose: the
//! agent links it without pulling in candle.

pub mod auth;
pub mod metrics;
pub mod tls;

pub use tls::{Tls, TlsArgs, TlsError};

use tracing_subscriber::EnvFilter;

/// Logging: `RUST_LOG` filters (default `info`), logs go to stderr so stdout stays the program's
/// output, and `json` switches to one JSON object per line.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests starting several services in one process) is harmless: ignore it.
    let _ = if json { builder.json().try_init() } else { builder.compact().try_init() };
}

/// Resolves when the process gets SIGINT or SIGTERM (what `docker stop` sends).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// The connections accepted on `listener`, with Nagle's algorithm off. tonic sets `TCP_NODELAY`
/// only on listeners it binds itself; on ours, a small gRPC frame after a large one could wait
/// for the peer's delayed ACK (~40 ms), which is what a 1 MB prefill through the emulator did.
pub fn incoming(listener: tokio::net::TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        if let Ok(s) = &conn
            && let Err(e) = s.set_nodelay(true)
        {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        conn
    })
}

/// Says how `service` serves on `addr`: TLS (and whether clients need certificates), or, loudly,
/// plaintext on an address other hosts can reach, where whoever is on that network can read (and
/// write) what crosses it, hidden states included.
pub fn warn_if_exposed(service: &str, addr: std::net::SocketAddr, tls: &Tls) {
    if tls.serves_tls() {
        tracing::info!(%addr, client_certificates = tls.requires_client_cert(), "{service} serves TLS");
    } else if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "{service} serves PLAINTEXT gRPC on a non-loopback address: anyone on this network can read and alter its traffic; use --tls-cert/--tls-key or keep it on a private network"
        );
    }
}

/// Runs `server` until it ends by itself, or until `grace` has passed since `stopping` was
/// cancelled: open streams get that long to drain, and a peer that vanished without closing its
/// connection cannot keep the process alive.
pub async fn serve_with_grace<E>(
    server: impl std::future::Future<Output = Result<(), E>>,
    stopping: &tokio_util::sync::CancellationToken,
    grace: std::time::Duration,
) -> Result<(), E> {
    let watchdog = async {
        stopping.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = server => r,
        () = watchdog => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "grace period over with connections still open; exiting");
            Ok(())
        }
    }
}
