use std::sync::Arc;

use clap::Parser;
use edge_server::EdgeConfig;
use split_core::bundle::{LoadedModel, resolve_model};
use splitinfer_telemetry::shutdown_signal;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = EdgeConfig::parse();
    splitinfer_telemetry::init(config.log_json);
    let path = resolve_model(config.model.as_deref(), &config.model_name)?;
    let model = Arc::new(tokio::task::spawn_blocking(move || LoadedModel::load(&path)).await??);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    edge_server::run(listener, config, model, shutdown_signal()).await
}
