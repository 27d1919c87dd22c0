//! What can go wrong in a session, and the one place it becomes a gRPC status.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<split_core::Error> for EdgeError {
    fn from(e: split_core::Error) -> Self {
        use split_core::Error as E;
        match e {
            E::InvalidArgument(_)
            | E::HiddenShape { .. }
            | E::SplitOutOfRange { .. }
            | E::TokenOutOfRange { .. }
            | E::LayerRange { .. } => Self::InvalidArgument(e.to_string()),
            E::ContextTooLong { .. } => Self::ResourceExhausted(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<splitinfer_link::Error> for EdgeError {
    fn from(e: splitinfer_link::Error) -> Self {
        split_core::Error::from(e).into()
    }
}

impl From<candle_core::Error> for EdgeError {
    fn from(e: candle_core::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<EdgeError> for Status {
    fn from(e: EdgeError) -> Self {
        let code = match &e {
            EdgeError::InvalidArgument(_) => Code::InvalidArgument,
            EdgeError::NotFound(_) => Code::NotFound,
            EdgeError::FailedPrecondition(_) => Code::FailedPrecondition,
            EdgeError::ResourceExhausted(_) => Code::ResourceExhausted,
            EdgeError::Unavailable(_) => Code::Unavailable,
            EdgeError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
