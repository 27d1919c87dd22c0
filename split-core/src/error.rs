//! The error type of `split-core`. Messages are lowercase and name the value that was wrong.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a split model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model file {path} does not exist{hint}")]
    ModelNotFound { path: PathBuf, hint: String },

    #[error("model file {path} is not a readable GGUF file: {reason}")]
    CorruptModel { path: PathBuf, reason: String },

    #[error("unsupported model architecture {arch:?} in {path}; supported: {supported}")]
    UnsupportedArchitecture { arch: String, path: PathBuf, supported: String },

    #[error("model metadata key {key} is missing or has the wrong type")]
    MissingMetadata { key: String },

    #[error("model tensor {name} is missing or unreadable: {reason}")]
    MissingTensor { name: String, reason: String },

    #[error("split point {k} is outside 0..={n_layers}")]
    SplitOutOfRange { k: usize, n_layers: usize },

    #[error("layer range {start}..{end} is not within 0..{n_layers}")]
    LayerRange { start: usize, end: usize, n_layers: usize },

    #[error("kv cache invariant broken: {0}")]
    CacheInvariant(String),

    #[error("hidden state has shape {got:?}, expected [1, seq, {hidden}]")]
    HiddenShape { got: Vec<usize>, hidden: usize },

    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },

    #[error("context of {needed} positions exceeds the model's limit of {limit}")]
    ContextTooLong { needed: usize, limit: usize },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("text {path} is empty{detail}")]
    EmptyText { path: PathBuf, detail: String },

    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },

    #[error("asset {name}: {reason}")]
    Asset { name: String, reason: String },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("{0}")]
    Calibration(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The link's errors keep their kind: a bad wire tensor stays an invalid argument.
impl From<splitinfer_link::Error> for Error {
    fn from(e: splitinfer_link::Error) -> Self {
        match e {
            splitinfer_link::Error::InvalidArgument(m) => Self::InvalidArgument(m),
            splitinfer_link::Error::Io { what, path, source } => Self::Io { what, path, source },
            e @ splitinfer_link::Error::Calibration { .. } => Self::Calibration(e.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
