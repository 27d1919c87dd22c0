//! Edge server configuration: every option is a flag and an `EDGE_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "edge-server", version, about = "splitinfer edge server: runs layers k..L, the head and sampling for many UE sessions over gRPC")]
pub struct EdgeConfig {
    /// Address to listen on. Loopback by default; give an interface's address (or 0.0.0.0) to
    /// serve other hosts.
    #[arg(long, env = "EDGE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// GGUF model file. Without it the known model --model-name is used, fetched if missing.
    #[arg(long, env = "EDGE_MODEL")]
    pub model: Option<PathBuf>,
    #[arg(long, env = "EDGE_MODEL_NAME", default_value = "smollm2-135m")]
    pub model_name: String,
    /// A session whose stream broke (link lost) is kept this long for the UE to resume, then dropped.
    #[arg(long, env = "EDGE_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// A stream that sends nothing for this long is ended with DEADLINE_EXCEEDED: before its
    /// first activation the session is closed (so opened-and-silent sessions cannot hold
    /// --max-sessions), later it is kept for a resume until the idle timeout.
    #[arg(long, env = "EDGE_STEP_TIMEOUT_MS", default_value_t = 60_000)]
    pub step_timeout_ms: u64,
    /// Largest gRPC message accepted or sent (a prefill of N tokens in f32 is N × hidden × 4 bytes).
    #[arg(long, env = "EDGE_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub max_message_bytes: usize,
    /// Sessions open at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "EDGE_MAX_SESSIONS", default_value_t = 256)]
    pub max_sessions: usize,
    /// The KV cache all open sessions may grow to, together, in MiB. A session is admitted only
    /// if its prompt_tokens + max_new_tokens positions, in every layer, fit beside the others';
    /// otherwise RESOURCE_EXHAUSTED says how much is committed.
    #[arg(long, env = "EDGE_KV_BUDGET_MIB", default_value_t = crate::worker::DEFAULT_KV_BUDGET_MIB)]
    pub kv_budget_mib: u64,
    /// What the sessions' KV caches store keys and values in: f32 (exact: the tokens equal the
    /// monolithic model's) or f16 (half the memory per session, and the KV budget admits twice the
    /// positions; keys and values are rounded to f16, docs/performance.md gives the perplexity cost).
    #[arg(long, env = "EDGE_KV_CACHE", default_value = "f32", value_parser = split_core::model::parse_kv_dtype)]
    pub kv_cache: candle_core::DType,
    /// Rows of a prefill computed together. Prefills advance a piece of one layer of one chunk at
    /// a time (projections, one attention head, or the MLP) between other sessions' decode steps,
    /// so a long prompt does not stall them; a message of more rows is computed in chunks of this
    /// many (deterministically, whatever the load).
    #[arg(long, env = "EDGE_PREFILL_CHUNK_ROWS", default_value_t = crate::worker::PREFILL_CHUNK_ROWS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536))]
    pub prefill_chunk_rows: usize,
    /// While a prefill is in progress and other sessions' steps are waiting too, the share of the
    /// model worker's time the prefill gets (0 ≤ share ≤ 0.95). 0.5: a long prompt and the
    /// sessions streaming beside it split the worker evenly. Lower favours the others' per-token
    /// latency; 0 gives the prefill only the gaps between their steps.
    #[arg(long, env = "EDGE_PREFILL_SHARE", default_value_t = crate::worker::DEFAULT_PREFILL_SHARE, value_parser = parse_share)]
    pub prefill_share: f64,
    /// After SIGTERM/SIGINT, open sessions are ended and the server waits this long for them.
    #[arg(long, env = "EDGE_GRACE_PERIOD_MS", default_value_t = 5_000)]
    pub grace_period_ms: u64,
    /// The agent to follow (e.g. http://agent:50053): the edge subscribes to its split decisions
    /// and acknowledges each epoch it is ready to serve. Sessions change split when their UE sends
    /// a migrate message, so the edge needs no agent to serve them; without one nothing is acked.
    #[arg(long, env = "EDGE_AGENT")]
    pub agent: Option<String>,
    /// Subscriber name the agent lists this edge under.
    #[arg(long, env = "EDGE_NAME", default_value = "edge")]
    pub name: String,
    /// Serve Prometheus metrics (OpenMetrics text) on this address, e.g. 0.0.0.0:9091.
    #[arg(long, env = "EDGE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Calibration statistics of the model (`splitinfer calibrate`), for sessions whose UE
    /// standardizes (or allocates) the hidden state or asks for mean concealment; refused if made for another
    /// model. Without it such sessions are refused.
    #[arg(long, env = "EDGE_CALIBRATION")]
    pub calibration: Option<PathBuf>,
    /// Low-rank adapters on the edge's layers (`splitinfer snake run` writes them; docs/snake.md),
    /// served on top of the model's weights. Refused if made for another model (sha256). The UE
    /// needs nothing: only the layers this edge runs carry them.
    #[arg(long, env = "EDGE_ADAPTER")]
    pub adapter: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "EDGE_LOG_JSON")]
    pub log_json: bool,
    #[command(flatten)]
    pub tls: splitinfer_telemetry::TlsArgs,
}

impl EdgeConfig {
    /// Defaults for tests and embedding: listen address is the caller's business.
    pub fn for_tests() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            model: None,
            model_name: "smollm2-135m".into(),
            idle_timeout_ms: 60_000,
            step_timeout_ms: 60_000,
            max_message_bytes: 64 << 20,
            max_sessions: 256,
            prefill_chunk_rows: crate::worker::PREFILL_CHUNK_ROWS,
            prefill_share: crate::worker::DEFAULT_PREFILL_SHARE,
            kv_cache: candle_core::DType::F32,
            kv_budget_mib: crate::worker::DEFAULT_KV_BUDGET_MIB,
            grace_period_ms: 5_000,
            agent: None,
            name: "edge".into(),
            metrics_listen: None,
            calibration: None,
            adapter: None,
            log_json: false,
            tls: Default::default(),
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn step_timeout(&self) -> Duration {
        Duration::from_millis(self.step_timeout_ms.max(1))
    }

    pub fn grace_period(&self) -> Duration {
        Duration::from_millis(self.grace_period_ms)
    }
}

/// `--prefill-share`: a number in `0..=MAX_PREFILL_SHARE`.
fn parse_share(s: &str) -> Result<f64, String> {
    let max = crate::worker::MAX_PREFILL_SHARE;
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=max).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not a share in 0..={max}")),
        Err(e) => Err(format!("{s:?} is not a number: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_kv_cache_type_is_f32_or_f16() {
        let parse = |v: &str| EdgeConfig::try_parse_from(["edge-server", "--kv-cache", v]).map(|c| c.kv_cache).map_err(|e| e.to_string());
        assert_eq!(parse("f16"), Ok(candle_core::DType::F16));
        assert_eq!(parse("f32"), Ok(candle_core::DType::F32));
        let e = parse("bf16").unwrap_err();
        assert!(e.contains("\"bf16\" is not a KV cache type: f32 or f16"), "{e}");
    }

    #[test]
    fn a_prefill_share_outside_its_range_is_refused_with_the_range() {
        assert_eq!(parse_share("0.25"), Ok(0.25));
        assert_eq!(parse_share("0"), Ok(0.0));
        assert!(parse_share("1").unwrap_err().contains("not a share in 0..=0.95"));
        assert!(parse_share("-0.1").is_err() && parse_share("NaN").is_err());
        assert!(parse_share("half").unwrap_err().contains("\"half\" is not a number"));
    }
}
