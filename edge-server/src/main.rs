use std::sync::Arc;

use clap::Parser;
use edge_server::EdgeConfig;
use split_core::adapter::Adapter;
use split_core::bundle::{LoadedModel, resolve_model};
use splitinfer_telemetry::shutdown_signal;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = EdgeConfig::parse();
    splitinfer_telemetry::init(config.log_json);
    let path = resolve_model(config.model.as_deref(), &config.model_name)?;
    let adapter = config.adapter.clone();
    let kv_cache = config.kv_cache;
    let model = tokio::task::spawn_blocking(move || -> anyhow::Result<LoadedModel> {
        let mut model = LoadedModel::load(&path)?;
        model.model.set_kv_dtype(kv_cache)?;
        tracing::info!(kv_cache = ?kv_cache, "KV cache type");
        if let Some(path) = adapter {
            let a = Adapter::load(&path, &model.sha256)?;
            let layers = model.model.apply_adapter(&a, 0)?;
            tracing::info!(path = %path.display(), layers, rank = a.rank, trained_split = a.trained_split, "adapter loaded");
        }
        Ok(model)
    });
    let model = Arc::new(model.await??);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    edge_server::run(listener, config, model, shutdown_signal()).await
}
