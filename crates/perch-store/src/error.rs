//! The store's error type.

use perch_core::{ErrorCode, Rejection};

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operation was refused for a reason the caller can act on (missing, duplicate, …).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The storage engine failed; the message is for the log, not the client.
    #[error("storage engine failure: {0}")]
    Backend(String),
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Rejected(r) => r.code,
            Error::Backend(_) => ErrorCode::Internal,
        }
    }
}

/// Results of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
