use std::process::ExitCode;

use agent::AgentConfig;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = AgentConfig::parse();
    splitinfer_telemetry::init(config.log_json);
    // A bad configuration (a malformed threshold file, a k beyond the model) is refused before
    // anything listens.
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    match agent::run(listener, config, splitinfer_telemetry::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
