//! Emulator configuration: every option is a flag and an `EMU_*` environment variable.

use std::net::SocketAddr;

use crate::channel_args::ChannelArgs;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "channel-emulator",
    version,
    about = "splitinfer channel emulator: a gRPC proxy that serves the edge's API, forwards every session to the real edge and applies the channel to the activations in flight"
)]
pub struct EmulatorConfig {
    /// Address to listen on (UEs connect here instead of to the edge). Loopback by default; give
    /// an interface's address (or 0.0.0.0) to serve other hosts.
    #[arg(long, env = "EMU_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// The real edge server.
    #[arg(long, env = "EMU_EDGE", default_value = "http://127.0.0.1:50051")]
    pub edge: String,
    /// Largest gRPC message accepted or sent, both sides.
    #[arg(long, env = "EMU_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub max_message_bytes: usize,
    /// Serve Prometheus text metrics on this address (e.g. 0.0.0.0:9102).
    #[arg(long, env = "EMU_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Scenario A: alternate between the good (L) and bad (H) presets every this many ms
    /// (0 = off). Implies --channel. The switch is by wall clock, so which message sees which
    /// channel depends on timing; the draws within each channel stay seeded.
    #[arg(long, env = "EMU_ALTERNATE_MS", default_value_t = 0)]
    pub alternate_ms: u64,
    /// Replay a channel trace: a CSV of t_ms,snr_db,m (m 0 = no fading), looping. Implies --channel;
    /// the rest of the channel (noise, loss, ...) comes from the flags.
    #[arg(long, env = "EMU_TRACE")]
    pub trace: Option<std::path::PathBuf>,
    /// Replay a generated mobility scenario (path loss, correlated shadowing, fading), seeded by
    /// --channel-seed. Implies --channel.
    #[arg(long, env = "EMU_MOBILITY", value_parser = ["pedestrian", "vehicular"])]
    pub mobility: Option<String>,
    /// After SIGTERM/SIGINT, relayed streams are ended and the emulator waits this long for its
    /// connections to close before exiting anyway.
    #[arg(long, env = "EMU_GRACE_PERIOD_MS", default_value_t = 5_000)]
    pub grace_period_ms: u64,
    /// Messages in the statistics' sliding window.
    #[arg(long, env = "EMU_STATS_WINDOW", default_value_t = 200)]
    pub stats_window: usize,
    /// Apply the channel described by the flags below to every activation; without it the
    /// emulator is a pure pass-through that changes no byte and adds no delay.
    #[arg(long, env = "EMU_CHANNEL")]
    pub channel: bool,
    /// The UEs whose streams are open through this emulator share the uplink evenly: each gets
    /// (B/N)·log2(1 + γ) with N the streams open when its message is sent (or the fixed rate / N),
    /// so air time grows with the number of UEs. Without it every UE has the whole link.
    #[arg(long, env = "EMU_SHARED_UPLINK")]
    pub shared_uplink: bool,
    #[command(flatten)]
    pub channel_args: ChannelArgs,
    /// Bearer token that authorizes SetChannel (metadata `authorization: Bearer <token>`).
    /// Without it, SetChannel is refused with PERMISSION_DENIED.
    #[arg(long, env = "EMU_CONTROL_TOKEN", hide_env_values = true)]
    pub control_token: Option<splitinfer_telemetry::auth::ControlToken>,
    /// The directory SetChannel's `trace_path` names traces in (a relative path inside it, read
    /// with a size cap). Without it, SetChannel refuses traces; --trace takes any path.
    #[arg(long, env = "EMU_TRACE_DIR")]
    pub trace_dir: Option<std::path::PathBuf>,
    #[arg(long, env = "EMU_LOG_JSON")]
    pub log_json: bool,
    #[command(flatten)]
    pub tls: splitinfer_telemetry::TlsArgs,
}

impl EmulatorConfig {
    /// A pass-through emulator on 127.0.0.1:0 in front of `edge`, for tests and embedding.
    pub fn new(edge: impl Into<String>) -> Self {
        use clap::Parser;
        let edge = edge.into();
        let mut c = Self::parse_from(["channel-emulator", "--listen", "127.0.0.1:0", "--edge", edge.as_str()]);
        c.log_json = false;
        c
    }
}
