//! Perch's storage: one trait per concern, with the embedded implementation used by a single
//! node. PostgreSQL (registry) and NATS JetStream (message log) implementations will sit behind
//! the same traits for scale-out.
//!
//! Owns durability of the registry: a write returns only after it is committed to disk.
//! Does not own validation rules (ids, limits, key formats): callers hand it valid records, and
//! read-modify-write callers pass a closure that may refuse with a `Rejection` inside the
//! transaction.
#![deny(clippy::unwrap_used)]

pub mod embedded;
mod error;
pub mod log;
pub mod pubsub;
mod registry;

pub use error::{Error, Result};
pub use registry::{
    DeviceFilter, DeviceRecordUpdate, DeviceUpdate, RecordKind, RecordUpdate, RegistryStore,
    RegistryUpdate,
};
