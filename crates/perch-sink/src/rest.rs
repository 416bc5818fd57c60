//! `GET /v1/projects/{project}/telemetry` and `GET /v1/projects/{project}/anomalies` on the admin
//! listener (Perch's own, behind the admin token): the newest points (or flagged readings) of a
//! range, oldest first.
//!
//! Query parameters (both): `deviceId`, `registryId`, `subFolder`, `since` and `until` (RFC 3339;
//! `since` inclusive, `until` exclusive), `pageSize` (default 1,000, at most 10,000). Answers
//! `{"points": [Point…]}` and `{"anomalies": [Anomaly…]}`; errors are `google.rpc.Status` JSON like the rest of the admin API.

use axum::Router;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use perch_core::ErrorCode;
use serde::Deserialize;

use crate::store::{QUERY_LIMIT_DEFAULT, Query, TelemetryStore};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    device_id: Option<String>,
    registry_id: Option<String>,
    sub_folder: Option<String>,
    since: Option<String>,
    until: Option<String>,
    page_size: Option<usize>,
}

/// The route, to be merged behind the admin-token layer.
pub fn router(store: TelemetryStore) -> Router {
    Router::new()
        .route("/v1/projects/{project}/telemetry", get(points))
        .route("/v1/projects/{project}/anomalies", get(anomalies))
        .with_state(store)
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "error": { "code": code.http_status(), "message": message.into(), "status": code.as_str() }
    });
    let http =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (http, axum::Json(body)).into_response()
}

fn time(name: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>, Response> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            DateTime::parse_from_rfc3339(&v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    error(
                        ErrorCode::InvalidArgument,
                        format!(
                            "{name} '{v}' is not an RFC 3339 time such as 2026-12-06T10:00:00Z"
                        ),
                    )
                })
        })
        .transpose()
}

/// The query a request asks for, or the error response saying what is wrong with it.
fn parse(
    project: String,
    params: Result<QueryParams<Params>, axum::extract::rejection::QueryRejection>,
) -> Result<Query, Response> {
    let QueryParams(p) = params.map_err(|e| error(ErrorCode::InvalidArgument, e.body_text()))?;
    Ok(Query {
        project,
        device_id: p.device_id,
        registry_id: p.registry_id,
        sub_folder: p.sub_folder,
        since: time("since", p.since)?,
        until: time("until", p.until)?,
        limit: p.page_size.unwrap_or(QUERY_LIMIT_DEFAULT),
    })
}

/// Runs a store read off the async workers and answers `{key: [...]}`.
async fn answer<T: serde::Serialize + Send + 'static>(
    key: &'static str,
    read: impl FnOnce() -> crate::Result<Vec<T>> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(items)) => axum::Json(serde_json::json!({ key: items })).into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "telemetry query failed");
            error(ErrorCode::Internal, "the telemetry store could not be read")
        }
        Err(_) => error(ErrorCode::Internal, "the telemetry query was cancelled"),
    }
}

async fn points(
    State(store): State<TelemetryStore>,
    Path(project): Path<String>,
    params: Result<QueryParams<Params>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match parse(project, params) {
        Ok(q) => answer("points", move || store.query(&q)).await,
        Err(r) => r,
    }
}

async fn anomalies(
    State(store): State<TelemetryStore>,
    Path(project): Path<String>,
    params: Result<QueryParams<Params>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match parse(project, params) {
        Ok(q) => answer("anomalies", move || store.anomalies(&q)).await,
        Err(r) => r,
    }
}
