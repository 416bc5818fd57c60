//! The admin surface: the router on `--admin` (cloudiot and Pub/Sub REST, telemetry queries,
//! the dashboard, discovery, `/healthz`, `/metrics`)
//! and the one on `--grpc` (DeviceManager, Publisher, Subscriber), each behind the admin token unless the server runs `--dev`.
//!
//! Also owns the REST router's cross-site guard (`same_origin_json`): request bodies must be
//! `application/json`, and state-changing calls carrying a foreign `Origin` are refused, so a web
//! page cannot drive a `--dev` server (or a browser holding a token) from another site.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use perch_pubsub::api::grpc::PubsubApi;
use perch_registry::api::grpc::DeviceManagerApi;
use perch_registry::api::rest;
use subtle::ConstantTimeEq;

/// Who may call the admin APIs.
#[derive(Clone)]
pub enum AdminAuth {
    /// `--dev`: anonymous calls are accepted (emulator style).
    Open,
    /// A bearer token is required.
    Token(Arc<str>),
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAuth::Open => f.write_str("Open"),
            AdminAuth::Token(_) => f.write_str("Token(***)"),
        }
    }
}

impl AdminAuth {
    /// Checks an `Authorization` header value; `Err` carries what to tell the caller.
    fn check(&self, header: Option<&str>) -> Result<(), &'static str> {
        let AdminAuth::Token(expected) = self else {
            return Ok(());
        };
        let Some(value) = header else {
            return Err(
                "the admin API needs 'Authorization: Bearer <token>'; the token is in DATA_DIR/admin-token (or run perch serve --dev)",
            );
        };
        let presented = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .unwrap_or("")
            .trim();
        if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err("the admin token is wrong; use the token in DATA_DIR/admin-token")
        }
    }
}

async fn require_token_rest(
    State(auth): State<AdminAuth>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth.check(header) {
        Ok(()) => next.run(request).await,
        Err(message) => refused(&request, &tonic::Status::unauthenticated(message)),
    }
}

async fn require_token_grpc(
    State(auth): State<AdminAuth>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth.check(header) {
        Ok(()) => next.run(request).await,
        Err(message) => tonic::Status::unauthenticated(message)
            .into_http::<axum::body::Body>()
            .into_response(),
    }
}

/// Whether a call may change state (everything but GET, HEAD and OPTIONS).
fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `scheme://host[:port]` → (the scheme's default port, `host:port`).
fn parse_origin(origin: &str) -> Option<(u16, String)> {
    let (scheme, rest) = origin.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    Some((
        default_port,
        authority_with_port(rest.trim_end_matches('/'), default_port)?,
    ))
}

/// `host[:port]` (IPv6 in brackets) → `host:port`, lower-cased, the port defaulted.
fn authority_with_port(authority: &str, default_port: u16) -> Option<String> {
    if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => authority.contains(':'),
    };
    Some(if has_port {
        authority
    } else {
        format!("{authority}:{default_port}")
    })
}

/// Whether the `Origin` of a request names the server it was sent to (`Host`, or the HTTP/2
/// authority), the port defaulted from the origin's scheme.
fn same_origin(origin: &str, host: &str) -> bool {
    parse_origin(origin).is_some_and(|(default_port, origin)| {
        authority_with_port(host, default_port).is_some_and(|host| host == origin)
    })
}

/// Whether a Content-Type is JSON (`application/json`, any parameters).
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// The answer to a request refused before its body was read. The unread body makes the
/// connection unusable for a next request, so the answer says `Connection: close`: without it a
/// client that reuses the connection (as `requests` does) can race the server's close and see
/// its next request dropped unanswered.
fn refused(request: &Request, status: &tonic::Status) -> Response {
    let mut response = rest::status_response(status);
    if has_body(request) && request.version() <= axum::http::Version::HTTP_11 {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Whether the request announces a body (a non-zero Content-Length, or a chunked one).
fn has_body(request: &Request) -> bool {
    let headers = request.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// The REST router's cross-site guard: a state-changing call whose `Origin` is another site is
/// `PERMISSION_DENIED`; a body that is not `application/json` is `INVALID_ARGUMENT`. Calls
/// without `Origin` (every non-browser client) and same-origin calls (the dashboard) pass.
async fn same_origin_json(request: Request, next: Next) -> Response {
    if changes_state(request.method())
        && let Some(origin) = request.headers().get(header::ORIGIN)
    {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let origin = origin.to_str().unwrap_or("");
        if !same_origin(origin, &host) {
            let status = tonic::Status::permission_denied(format!(
                "cross-site request refused: Origin '{origin}' is not this server ('{host}')"
            ));
            return refused(&request, &status);
        }
    }
    if has_body(&request) {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_json(content_type) {
            let status = tonic::Status::invalid_argument(format!(
                "request bodies must be 'Content-Type: application/json', not '{content_type}'"
            ));
            return refused(&request, &status);
        }
    }
    next.run(request).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// The router on `--admin`.
pub fn rest_router(
    auth: AdminAuth,
    devices: DeviceManagerApi,
    pubsub: PubsubApi,
    telemetry: perch_sink::TelemetryStore,
) -> Router {
    let protected = rest::router(devices)
        .merge(perch_pubsub::api::rest::router(pubsub))
        .merge(perch_sink::rest::router(telemetry))
        .merge(crate::scrape::router())
        .layer(middleware::from_fn_with_state(auth, require_token_rest));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(rest::discovery_router())
        .merge(perch_sink::dashboard::router())
        .merge(protected)
        .fallback(|request: Request| async move {
            rest::status_response(&tonic::Status::not_found(format!(
                "no method serves {} {}",
                request.method(),
                request.uri().path()
            )))
        })
        .layer(middleware::from_fn(same_origin_json))
}

/// The router on `--grpc`.
pub fn grpc_router(auth: AdminAuth, devices: DeviceManagerApi, pubsub: PubsubApi) -> Router {
    let mut routes = tonic::service::Routes::builder();
    routes.add_service(devices.into_server());
    routes.add_service(pubsub.clone().publisher_server());
    routes.add_service(pubsub.clone().subscriber_server());
    routes.add_service(pubsub.iam_server());
    routes
        .routes()
        .into_axum_router()
        .layer(middleware::from_fn_with_state(auth, require_token_grpc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_compares_host_and_port_with_scheme_defaults() {
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same_origin("http://LOCALHOST:8080/", "localhost:8080"));
        assert!(same_origin("http://perch.example", "perch.example"));
        assert!(same_origin("https://perch.example", "perch.example:443"));
        assert!(same_origin("http://[::1]:8080", "[::1]:8080"));
        assert!(!same_origin("http://evil.example", "127.0.0.1:8080"));
        assert!(!same_origin("http://127.0.0.1:9999", "127.0.0.1:8080"));
        assert!(!same_origin("null", "127.0.0.1:8080"));
        assert!(!same_origin(
            "http://evil.example@127.0.0.1:8080",
            "127.0.0.1:8080"
        ));
        assert!(!same_origin("http://127.0.0.1:8080", ""));
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("Application/JSON"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json(""));
    }
}
