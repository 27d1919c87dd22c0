//! What can go wrong: a bad configuration (refused at start-up), and bad requests to the service,
//! with the one place they become a gRPC status.

use std::path::PathBuf;

use tonic::{Code, Status};

/// A configuration the agent refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read threshold file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A malformed threshold file, at a line (1-based) of it.
    #[error("threshold file {path} line {line}: {what}")]
    Threshold { path: PathBuf, line: usize, what: String },
    /// A learned policy that cannot be read, or was trained for another model.
    #[error(transparent)]
    Policy(#[from] crate::policy::learned::PolicyFileError),
    #[error("{0}")]
    Invalid(String),
}

/// A request the agent refuses.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
}

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Self {
        let code = match &e {
            AgentError::InvalidArgument(_) => Code::InvalidArgument,
            AgentError::NotFound(_) => Code::NotFound,
        };
        Status::new(code, e.to_string())
    }
}
