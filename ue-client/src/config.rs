//! UE client configuration: every option is a flag and a `UE_*` environment variable.

use std::path::PathBuf;

use split_core::migrate::MigrationMode;
use split_core::transform::{Concealment, Normalization};
use split_core::wire::WireDType;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ue-client",
    version,
    about = "splitinfer UE: runs the embedding and layers 0..K here, streams the hidden state to the edge (or the channel emulator in front of it) and prints the text as tokens come back"
)]
pub struct UeConfig {
    /// The edge server, or the channel emulator in front of it. Several, comma-separated, to
    /// fail over: when the session is lost the UE replays it on the next one.
    #[arg(long, env = "UE_EDGE", default_value = "http://127.0.0.1:50051", value_delimiter = ',')]
    pub edge: Vec<String>,
    /// After the link breaks, keep reconnecting (backoff 100 ms doubling to 2 s, jittered) for
    /// this long to resume the session or replay it into a new one; 0 gives up at once.
    #[arg(long, env = "UE_RESUME_DEADLINE_MS", default_value_t = 30_000)]
    pub resume_deadline_ms: u64,
    /// No reply from the edge for this long counts as a broken link (a frozen peer).
    #[arg(long, env = "UE_STEP_TIMEOUT_MS", default_value_t = 30_000)]
    pub step_timeout_ms: u64,
    /// GGUF model file; must be the file the edge serves (compared by sha256).
    #[arg(long, env = "UE_MODEL")]
    pub model: Option<PathBuf>,
    #[arg(long, env = "UE_MODEL_NAME", default_value = "smollm2-135m")]
    pub model_name: String,
    /// Split point K: layers 0..K run here, K..L on the edge.
    #[arg(long, env = "UE_SPLIT", default_value_t = 15)]
    pub split: usize,
    /// Element type of the hidden state on the wire. Values for the analog link: f32 (exact),
    /// f16 or bf16 (half the bytes). Codecs for the digital link: int8 (per-row scale), int4
    /// (per-32 scale), int8-outlier and int4-outlier (a row's 8 largest values sent apart in f16).
    #[arg(long, env = "UE_WIRE_DTYPE", default_value = "f32")]
    pub wire_dtype: WireDType,
    /// Transmitter normalization before the codec: identity; standardize ((y − μ)/σ per
    /// dimension with the calibration statistics; the edge undoes it); or allocate (standardize,
    /// then the calibration's transmit gains, at k = L only). Needs --calibration.
    #[arg(long, env = "UE_NORMALIZATION", default_value = "identity")]
    pub normalization: Normalization,
    /// What the edge fills lost elements with: zero (the reference) or mean (each dimension's
    /// calibration mean). mean needs --calibration here and on the edge.
    #[arg(long, env = "UE_CONCEALMENT", default_value = "zero")]
    pub concealment: Concealment,
    /// Calibration statistics of the model (`splitinfer calibrate`); the edge must hold the same
    /// file (compared by sha256).
    #[arg(long, env = "UE_CALIBRATION")]
    pub calibration: Option<PathBuf>,
    /// The text to continue (not needed with --score).
    #[arg(long, short, env = "UE_PROMPT", required_unless_present = "score", default_value = "")]
    pub prompt: String,
    /// Wrap the prompt in the model's chat turn format (ChatML).
    #[arg(long, env = "UE_CHAT")]
    pub chat: bool,
    #[arg(long, short = 'n', env = "UE_MAX_NEW_TOKENS", default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Generate all --max-new-tokens tokens, going on past end-of-sequence tokens (runs of a
    /// fixed length, for benchmarks and repeatable experiments).
    #[arg(long, env = "UE_IGNORE_EOS")]
    pub ignore_eos: bool,
    /// 0 is greedy.
    #[arg(long, env = "UE_TEMPERATURE", default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, env = "UE_TOP_K")]
    pub top_k: Option<usize>,
    #[arg(long, env = "UE_TOP_P")]
    pub top_p: Option<f32>,
    /// Seed of the edge's sampler.
    #[arg(long, env = "UE_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Rows per prefill message (0 = the whole prompt in one message).
    #[arg(long, env = "UE_PREFILL_CHUNK", default_value_t = 0)]
    pub prefill_chunk: usize,
    /// The agent to follow: split decisions arrive from it and move K at token boundaries. Without
    /// it, K stays as given. If the agent goes away the UE keeps its split and reconnects.
    #[arg(long, env = "UE_AGENT")]
    pub agent: Option<String>,
    /// How the KV caches of layers that change sides move: `transfer` (ship the entries),
    /// `recompute` (replay logged boundary states, keeps a log of them in memory) or `auto` (the
    /// cheaper by a cost model of measured layer times and --link-mbps; logged at every change).
    #[arg(long, env = "UE_MIGRATION", default_value = "auto")]
    pub migration: MigrationMode,
    /// Link rate the migration cost model assumes, in Mbit/s.
    #[arg(long, env = "UE_LINK_MBPS", default_value_t = 100.0)]
    pub link_mbps: f64,
    /// How many times faster the edge runs a layer than this UE (cost model).
    #[arg(long, env = "UE_EDGE_SPEEDUP", default_value_t = 1.0)]
    pub edge_speedup: f64,
    /// Serve Prometheus metrics (OpenMetrics text) on this address while generating, e.g.
    /// 127.0.0.1:9093.
    #[arg(long, env = "UE_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Largest gRPC message sent or accepted.
    #[arg(long, env = "UE_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub max_message_bytes: usize,
    #[arg(long, env = "UE_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    pub connect_timeout_ms: u64,
    /// Score this text file instead of generating (teacher-forced): the UE sends windows of it
    /// through the link and the edge returns the log-probability of each next token; prints the
    /// perplexity. The windows are `splitinfer ppl`'s (--window, --stride, --max-tokens).
    #[arg(long, env = "UE_SCORE")]
    pub score: Option<PathBuf>,
    /// With --score: tokens of the text to score (0 = all).
    #[arg(long, env = "UE_MAX_TOKENS", default_value_t = 4096, requires = "score")]
    pub max_tokens: usize,
    /// With --score: tokens per window, each from an empty cache.
    #[arg(long, env = "UE_WINDOW", default_value_t = 512, requires = "score")]
    pub window: usize,
    /// With --score: a window starts every this many tokens and scores only its last `stride`
    /// targets (as `splitinfer ppl`).
    #[arg(long, env = "UE_STRIDE", default_value_t = 256, requires = "score")]
    pub stride: usize,
    /// Print one JSON object (text, tokens, timings) instead of streaming text.
    #[arg(long, env = "UE_JSON")]
    pub json: bool,
    /// Label for the edge's logs.
    #[arg(long, env = "UE_NAME", default_value = "ue")]
    pub name: String,
    #[arg(long, env = "UE_LOG_JSON")]
    pub log_json: bool,
    #[command(flatten)]
    pub tls: splitinfer_telemetry::TlsArgs,
}
