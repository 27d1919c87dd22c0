//! The error type of `splitinfer-link`. Messages are lowercase and name the value that was wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },

    /// A calibration file that is missing, malformed or for another model.
    #[error("calibration {path}: {reason}")]
    Calibration { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
