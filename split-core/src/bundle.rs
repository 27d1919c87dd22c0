//! A model as a service holds it: weights, tokenizer and identity, loaded once and shared.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::assets;
use crate::error::Result;
use crate::model::SplitModel;
use crate::tokenizer::Tokenizer;

#[derive(Debug)]
pub struct LoadedModel {
    pub model: SplitModel,
    pub tokenizer: Tokenizer,
    /// sha256 of the GGUF file: the identity UE and edge compare before they split a model.
    pub sha256: String,
}

impl LoadedModel {
    pub fn load(path: &Path) -> Result<Self> {
        let t = Instant::now();
        let model = SplitModel::load(path)?;
        let tokenizer = Tokenizer::from_gguf_file(path)?;
        let sha256 = assets::sha256_file(path)?;
        let c = model.config();
        tracing::info!(
            model = %c.name,
            arch = c.architecture.gguf_name(),
            layers = c.n_layers,
            hidden = c.hidden_size,
            sha256 = %sha256,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(Self { model, tokenizer, sha256 })
    }
}

/// The model a service should run: the file the user named, or a known model by name, fetched
/// into the cache if missing.
pub fn resolve_model(path: Option<&Path>, name: &str) -> Result<PathBuf> {
    match path {
        Some(p) => Ok(p.to_path_buf()),
        None => assets::ensure_model(&assets::model_asset(name)?, &mut |m| tracing::info!("{m}")),
    }
}

