//! The store's error type, and the one place that sorts engine failures into what a client can
//! act on: a full disk is `RESOURCE_EXHAUSTED` (retry later), anything else a storage engine
//! reports is `INTERNAL`.

use perch_core::{ErrorCode, Rejection};

/// What a store operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The operation was refused for a reason the caller can act on (missing, duplicate, …).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The disk (or the file system's quota) has no room for the write; nothing was stored, and
    /// the same write can succeed once space returns.
    #[error("the server's storage is full; nothing was stored, try again later ({0})")]
    Full(String),
    /// The store is being reopened after an I/O failure; the same call can succeed shortly.
    #[error("{0}")]
    Unavailable(String),
    /// The storage engine failed; the message is for the log, not the client.
    #[error("storage engine failure: {0}")]
    Backend(String),
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Rejected(r) => r.code,
            Error::Full(_) => ErrorCode::ResourceExhausted,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Backend(_) => ErrorCode::Internal,
        }
    }

    /// An I/O failure of a store file: `Full` when the disk or a quota is exhausted.
    pub fn io(e: &std::io::Error) -> Error {
        if is_full(e) {
            Error::Full(e.to_string())
        } else {
            Error::Backend(e.to_string())
        }
    }

    /// A failure reported by redb, sorted like [`Error::io`].
    pub fn redb(e: impl Into<redb::Error>) -> Error {
        match e.into() {
            redb::Error::Io(io) => Error::io(&io),
            other => Error::Backend(other.to_string()),
        }
    }
}

/// Whether an I/O error means "no space": ENOSPC or EDQUOT.
fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Results of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
