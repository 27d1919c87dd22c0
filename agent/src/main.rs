use std::process::ExitCode;

use agent::AgentConfig;
use agent::config::PolicyKind;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

#[tokio::main]
async fn main() -> ExitCode {
    let matches = AgentConfig::command().get_matches();
    let mut config = match AgentConfig::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    splitinfer_telemetry::init(config.log_json);
    // A threshold table from the environment alone (a compose file's default) does not stop a
    // fixed or learned agent; on the command line it is still a mistake (see validate).
    if config.policy != PolicyKind::Threshold && matches.value_source("thresholds") == Some(ValueSource::EnvVariable) {
        tracing::warn!(thresholds = ?config.thresholds, policy = ?config.policy, "AGENT_THRESHOLDS is set but applies to --policy threshold only; ignored");
        config.thresholds = None;
    }
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
