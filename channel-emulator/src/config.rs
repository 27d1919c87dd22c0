//! Emulator configuration: every option is a flag and an `EMU_*` environment variable.

use std::net::SocketAddr;

use split_core::channel::args::ChannelArgs;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "channel-emulator",
    version,
    about = "splitinfer channel emulator: a gRPC proxy that serves the edge's API, forwards every session to the real edge and applies the channel to the activations in flight"
)]
pub struct EmulatorConfig {
    /// Address to listen on (UEs connect here instead of to the edge).
    #[arg(long, env = "EMU_LISTEN", default_value = "0.0.0.0:50052")]
    pub listen: SocketAddr,
    /// The real edge server.
    #[arg(long, env = "EMU_EDGE", default_value = "http://127.0.0.1:50051")]
    pub edge: String,
    /// Largest gRPC message accepted or sent, both sides.
    #[arg(long, env = "EMU_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub max_message_bytes: usize,
    /// Apply the channel described by the flags below to every activation; without it the
    /// emulator is a pure pass-through that changes no byte and adds no delay.
    #[arg(long, env = "EMU_CHANNEL")]
    pub channel: bool,
    #[command(flatten)]
    pub channel_args: ChannelArgs,
    #[arg(long, env = "EMU_LOG_JSON")]
    pub log_json: bool,
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
