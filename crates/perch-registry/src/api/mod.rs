//! The cloudiot v1 `DeviceManager` API: gRPC (tonic, `grpc`) and REST (axum, `rest`, gRPC
//! transcoding onto the same handlers), with domain ↔ proto conversions in `convert`.
//!
//! Errors map to `tonic::Status` in exactly one place (`to_status`); REST renders that status
//! as `google.rpc.Status` JSON.

mod convert;
#[doc(hidden)]
pub use convert::check_request_body;
pub mod grpc;
mod provisioning_rest;
pub mod rest;

use perch_core::ErrorCode;

use crate::Error;

/// The gRPC status for a registry error. Internal failures get a generic message with a request
/// id; the chain goes to the log.
pub fn to_status(err: Error) -> tonic::Status {
    status_for(err.code(), err.to_string())
}

/// A status with `code` and `message`; internal codes hide the message behind a request id.
pub fn status_for(code: ErrorCode, message: String) -> tonic::Status {
    if matches!(
        code,
        ErrorCode::Internal | ErrorCode::Unknown | ErrorCode::DataLoss
    ) {
        let request_id = format!("{:016x}", rand::random::<u64>());
        tracing::error!(request_id, error = %message, "internal error");
        return tonic::Status::new(
            tonic::Code::from(code.grpc_code()),
            format!("internal error; request id {request_id}"),
        );
    }
    tonic::Status::new(tonic::Code::from(code.grpc_code()), message)
}

pub(crate) fn invalid(message: impl Into<String>) -> tonic::Status {
    tonic::Status::invalid_argument(message)
}
