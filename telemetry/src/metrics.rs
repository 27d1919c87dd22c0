//! The Prometheus endpoint: every service keeps its metrics in a
//! [`prometheus_client::registry::Registry`] (counters, gauges, histograms where a distribution
//! matters) and serves it as OpenMetrics text on `--metrics-listen` with [`serve`].

use std::sync::Arc;
use std::time::Duration;

pub use prometheus_client;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Content type of what [`serve`] answers.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders the text to serve at each scrape (a registry, plus anything computed at scrape time).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// A registry's OpenMetrics text, ending in `# EOF`.
pub fn text(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}

/// Histogram buckets for latencies in seconds: 50 µs to ~13 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 19))
}

/// Histograms by label set, each with [`latency_histogram`]'s buckets (or another constructor).
pub type Histograms = prometheus_client::metrics::family::Family<Vec<(&'static str, String)>, Histogram, fn() -> Histogram>;

/// A family of latency histograms.
pub fn latency_histograms() -> Histograms {
    Histograms::new_with_constructor(latency_histogram)
}

/// Histogram buckets for message sizes in bytes: 256 B to 256 MiB, ×4.
pub fn bytes_histogram() -> Histogram {
    Histogram::new(exponential_buckets(256.0, 4.0, 11))
}

/// Serves `GET /metrics` (any path, in fact) with `render()` until `shutdown`.
pub async fn serve(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    loop {
        let (mut socket, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let render = render.clone();
        tokio::spawn(async move {
            // Read the request head; every request gets the same answer.
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            while got < buf.len() {
                match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf[got..])).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        got += n;
                        if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let body = render();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

/// Binds `addr` (if given) and serves `render` there in the background.
pub async fn start(addr: Option<std::net::SocketAddr>, render: Render, shutdown: CancellationToken) -> std::io::Result<Option<std::net::SocketAddr>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "metrics listening");
    tokio::spawn(serve(listener, render, shutdown));
    Ok(Some(local))
}

/// One sample line of OpenMetrics/Prometheus text: `name{labels} value`, for tests and tools
/// that read an endpoint back.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses exposition text into samples; a line that is neither a comment nor a valid sample is an
/// error naming it.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: {line:?} is not a sample", i + 1);
        let (series, value) = line.rsplit_once(' ').ok_or_else(bad)?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad())?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').ok_or_else(bad)?;
                let mut labels = Vec::new();
                for pair in split_labels(body) {
                    let (k, v) = pair.split_once('=').ok_or_else(bad)?;
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).ok_or_else(bad)?;
                    labels.push((k.to_string(), v.replace("\\\"", "\"").replace("\\\\", "\\")));
                }
                (name.to_string(), labels)
            }
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            return Err(bad());
        }
        out.push(Sample { name, labels, value });
    }
    Ok(out)
}

/// Splits `a="x",b="y,z"` at the commas outside quotes.
fn split_labels(body: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < body.len() {
        parts.push(&body[start..]);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    #[test]
    fn a_registry_round_trips_through_text_and_parse() {
        let mut r = Registry::default();
        let c: Family<Vec<(String, String)>, Counter> = Family::default();
        r.register("errors", "Errors by code.", c.clone());
        c.get_or_create(&vec![("code".into(), "invalid_argument".into())]).inc_by(3);
        let h = latency_histogram();
        r.register("latency_seconds", "A latency.", h.clone());
        h.observe(0.001);
        let samples = parse(&text(&r)).unwrap();
        let errors = samples.iter().find(|s| s.name == "errors_total").unwrap();
        assert_eq!(errors.labels, vec![("code".to_string(), "invalid_argument".to_string())]);
        assert_eq!(errors.value, 3.0);
        assert!(samples.iter().any(|s| s.name == "latency_seconds_count" && s.value == 1.0));
        assert!(samples.iter().any(|s| s.name == "latency_seconds_bucket" && s.labels[0].1 == "+Inf"));
    }

    #[test]
    fn parse_refuses_garbage_and_names_the_line() {
        let e = parse("# HELP x y\nx 1\nnot a sample at all\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
        assert_eq!(parse("a{b=\"c,d\",e=\"f\"} 2.5\n").unwrap()[0].labels.len(), 2);
    }
}
