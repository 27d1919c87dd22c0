use channel_emulator::EmulatorConfig;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = EmulatorConfig::parse();
    splitinfer_telemetry::init(config.log_json);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    channel_emulator::run(listener, config, splitinfer_telemetry::shutdown_signal()).await
}
