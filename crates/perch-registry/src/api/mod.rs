//! The cloudiot v1 `DeviceManager` API: gRPC (tonic, `grpc`) and REST (axum, `rest`, gRPC
//! transcoding onto the same handlers), with domain ↔ proto conversions in `convert`.
//!
//! Errors map to `tonic::Status` in exactly one place (`to_status`, through `perch_api`); REST
//! renders that status as `google.rpc.Status` JSON (`perch_api::status_response`).

mod convert;
#[doc(hidden)]
pub use convert::check_request_body;
pub mod grpc;
mod provisioning_rest;
pub mod rest;

use crate::Error;

/// The gRPC status for a registry error (`perch_api::status`): internal failures get a generic
/// message with a request id; the chain goes to the log.
pub fn to_status(err: Error) -> tonic::Status {
    perch_api::status(err.code(), err.to_string())
}

pub(crate) fn invalid(message: impl Into<String>) -> tonic::Status {
    tonic::Status::invalid_argument(message)
}
