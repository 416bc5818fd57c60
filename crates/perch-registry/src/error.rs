//! The registry's error type.

use perch_core::{ErrorCode, IdError, NameError, Rejection};

/// What a registry operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was refused with a reason the caller can act on.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] perch_store::Error),
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Rejected(r) => r.code,
            Error::Store(e) => e.code(),
        }
    }
}

impl From<IdError> for Error {
    fn from(e: IdError) -> Error {
        Error::Rejected(Rejection::invalid_argument(e.to_string()))
    }
}

impl From<NameError> for Error {
    fn from(e: NameError) -> Error {
        Error::Rejected(Rejection::invalid_argument(e.to_string()))
    }
}

/// Results of registry operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
