//! Perch's API error edge, shared by every crate that serves an API (the registry, Pub/Sub, the
//! HTTP device bridge, the telemetry sink): the one mapping from an `ErrorCode` and a message to
//! a `tonic::Status` (`status`), and the one renderer of Google's REST error body,
//! `{"error":{"code","message","status"}}` (`error_response`, `status_response`).
//!
//! Internal failures (`INTERNAL`, `UNKNOWN`, `DATA_LOSS`) never reach a client with their cause:
//! the client gets a request id, the log gets the cause under the same id.
#![deny(clippy::unwrap_used)]

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use perch_core::ErrorCode;

/// The gRPC status for `code` and `message`; internal codes hide the message behind a request
/// id, logged with it.
pub fn status(code: ErrorCode, message: impl Into<String>) -> tonic::Status {
    let message = message.into();
    let grpc = tonic::Code::from(code.grpc_code());
    if is_internal(code) {
        let request_id = format!("{:016x}", rand::random::<u64>());
        tracing::error!(request_id, error = %message, "internal error");
        return tonic::Status::new(grpc, format!("internal error; request id {request_id}"));
    }
    tonic::Status::new(grpc, message)
}

/// Whether a code's message stays in the log rather than going to the client.
fn is_internal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Internal | ErrorCode::Unknown | ErrorCode::DataLoss
    )
}

/// Google's REST error body (`google.rpc.Status` as JSON) for `code` and `message`.
pub fn error_body(code: ErrorCode, message: &str) -> serde_json::Value {
    serde_json::json!({
        "error": { "code": code.http_status(), "message": message, "status": code.as_str() }
    })
}

/// A REST error answer: the HTTP status of `code`, with Google's error body.
pub fn error_response(code: ErrorCode, message: impl AsRef<str>) -> Response {
    let http =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (http, axum::Json(error_body(code, message.as_ref()))).into_response()
}

/// A gRPC status rendered as a REST error answer (gRPC transcoding).
pub fn status_response(status: &tonic::Status) -> Response {
    error_response(
        ErrorCode::from_grpc_code(status.code() as i32),
        status.message(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn a_client_error_keeps_its_code_and_message() {
        let s = status(ErrorCode::NotFound, "Resource not found (resource=t).");
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message(), "Resource not found (resource=t).");
    }

    #[test]
    fn internal_errors_hide_their_cause_behind_a_request_id() {
        for code in [ErrorCode::Internal, ErrorCode::Unknown, ErrorCode::DataLoss] {
            let s = status(code, "disk on fire at /var/lib/perch");
            assert_eq!(s.code(), tonic::Code::from(code.grpc_code()));
            let id = s
                .message()
                .strip_prefix("internal error; request id ")
                .unwrap();
            assert_eq!(id.len(), 16);
            assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        }
    }

    #[tokio::test]
    async fn the_rest_body_is_googles_error_shape_byte_for_byte() {
        let r = error_response(ErrorCode::NotFound, "no such \"thing\"");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            r.headers()[axum::http::header::CONTENT_TYPE],
            "application/json"
        );
        assert_eq!(
            body(r).await,
            r#"{"error":{"code":404,"message":"no such \"thing\"","status":"NOT_FOUND"}}"#
        );
    }

    #[tokio::test]
    async fn a_status_renders_through_its_canonical_code() {
        let r = status_response(&tonic::Status::invalid_argument("bad"));
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            body(r).await,
            r#"{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}"#
        );
        let r = status_response(&tonic::Status::resource_exhausted("slow down"));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
