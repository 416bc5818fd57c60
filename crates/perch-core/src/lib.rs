//! Perch's vocabulary, shared by every other crate: resource names and validated ids, limits,
//! canonical error codes, the clock, and the registry's data model.
//!
//! Owns no I/O and no async runtime: it builds in seconds and everything may depend on it.
#![deny(clippy::unwrap_used)]

pub mod clock;
pub mod error;
pub mod ids;
pub mod limits;
pub mod model;
pub mod names;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ErrorCode, Rejection};
pub use ids::{DeviceId, IdError, RegistryId};
pub use names::{DeviceName, DeviceRef, LocationName, NameError, RegistryName};
