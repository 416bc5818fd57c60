//! Perch's device registry: registries, devices, credentials, config versions and states, gateway
//! bindings, with the cloudiot v1 `DeviceManager` API over gRPC and REST.
//!
//! Owns the rules of the registry (ids, limits, key formats, masks, paging, config versioning).
//! Does not own storage (`perch-store`), device connections or Pub/Sub; it never binds a socket:
//! `api::grpc` and `api::rest` hand the composition root a service and a router.
#![deny(clippy::unwrap_used)]

pub mod api;
pub mod auth;
mod error;
pub mod events;
pub mod keys;
pub mod mask;
pub mod page;
pub mod provisioning;
mod service;

pub use error::{Error, Result};
pub use service::{
    Bookkeeping, COMMAND_DATA_MAX_BYTES, DeviceListQuery, DevicePatch, DeviceUpdateField,
    GatewayListOption, RegistryPatch, RegistryService, RegistryServiceOptions, RegistryUpdateField,
};
