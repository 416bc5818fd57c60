//! The Pub/Sub error type.

use perch_core::{ErrorCode, Rejection};

/// What a Pub/Sub operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Rejected(#[from] Rejection),
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

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::Rejected(Rejection::invalid_argument(message))
}

pub(crate) fn not_found(resource: &str) -> Error {
    let id = resource.rsplit('/').next().unwrap_or(resource);
    Error::Rejected(Rejection::not_found(format!(
        "Resource not found (resource={id})."
    )))
}

pub(crate) fn failed_precondition(message: impl Into<String>) -> Error {
    Error::Rejected(Rejection::failed_precondition(message))
}
