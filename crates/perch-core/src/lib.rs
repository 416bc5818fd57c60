//! Perch's vocabulary, shared by every other crate: resource names and validated ids, limits,
//! canonical error codes, the clock, the shutdown signal, and the registry's data model.
//!
//! Owns no I/O and no async runtime (tokio's `sync` channels only, for the shutdown signal): it
//! builds in seconds and everything may depend on it.
#![deny(clippy::unwrap_used)]

pub mod clock;
pub mod error;
pub mod ids;
pub mod limits;
pub mod model;
pub mod names;
pub mod shutdown;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ErrorCode, Rejection};
pub use ids::{DeviceId, IdError, RegistryId};
pub use names::{DeviceName, DeviceRef, LocationName, NameError, RegistryName};
