//! `splitinfer health`: ask a service's standard gRPC health service (`grpc.health.v1.Health/Check`)
//! whether it is serving. Made for container health checks and runbooks: the images hold no
//! grpcurl or curl, and a TCP probe would call an edge "healthy" before it answers gRPC.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use splitinfer_telemetry::Tls;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Succeeds when the server at `url` reports `service` (`""` = the server as a whole, or e.g.
/// `splitinfer.v1.Edge`) as SERVING within `timeout`, connection included (over `tls`); otherwise the error
/// says what it got instead.
pub async fn check(url: &str, tls: &Tls, service: &str, timeout: Duration) -> Result<()> {
    let endpoint = tls.endpoint(url).context("--url")?;
    let what = if service.is_empty() { url.to_string() } else { format!("{service} at {url}") };
    let ask = async {
        let channel = endpoint.connect_timeout(timeout).connect().await.with_context(|| format!("cannot reach {url}"))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest { service: service.to_string() })
            .await
            .map_err(|s| anyhow!("{what} answered the health check with {:?}: {}", s.code(), s.message()))
    };
    let response = tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| anyhow!("no health answer from {what} within {} ms", timeout.as_millis()))??;
    match response.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => bail!("{what} is {}", other.as_str_name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_serving_server_passes_and_an_unknown_service_or_a_closed_port_fails() {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("x.Serving", tonic_health::ServingStatus::Serving).await;
        reporter.set_service_status("x.Down", tonic_health::ServingStatus::NotServing).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let t = Duration::from_secs(5);
        check(&url, &Tls::default(), "", t).await.unwrap();
        check(&url, &Tls::default(), "x.Serving", t).await.unwrap();
        let down = check(&url, &Tls::default(), "x.Down", t).await.unwrap_err().to_string();
        assert!(down.contains("x.Down") && down.contains("NOT_SERVING"), "{down}");
        let unknown = check(&url, &Tls::default(), "x.Nope", t).await.unwrap_err().to_string();
        assert!(unknown.contains("NotFound"), "{unknown}");
        server.abort();

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let err = format!("{:#}", check(&closed, &Tls::default(), "", t).await.unwrap_err());
        assert!(err.contains("cannot reach"), "{err}");
    }
}
