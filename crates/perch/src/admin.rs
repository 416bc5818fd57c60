//! The admin surface: the router on `--admin` (cloudiot and Pub/Sub REST, telemetry queries,
//! the dashboard, discovery, `/healthz`, `/metrics`)
//! and the one on `--grpc` (DeviceManager, Publisher, Subscriber), each behind the admin token unless the server runs `--dev`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
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
        Err(message) => rest::status_response(&tonic::Status::unauthenticated(message)),
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
