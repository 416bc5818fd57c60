//! `GET /v1/projects/{project}/telemetry` and `GET /v1/projects/{project}/anomalies` on the admin
//! listener (Perch's own, behind the admin token): the newest points (or flagged readings) of a
//! range, oldest first.
//!
//! `GET /v1/projects/{project}/telemetry:watch` streams, as server-sent events, each point
//! (`event: point`) and anomaly (`event: anomaly`) as it is stored, filtered by `deviceId`,
//! `registryId` and `subFolder` when given (the dashboard's live feed).
//!
//! Query parameters (both): `deviceId`, `registryId`, `subFolder`, `since` and `until` (RFC 3339;
//! `since` inclusive, `until` exclusive), `pageSize` (default 1,000, at most 10,000). Answers
//! `{"points": [Point…]}` and `{"anomalies": [Anomaly…]}`; errors are `google.rpc.Status` JSON like the rest of the admin API.

use axum::Router;
use axum::extract::{Path, Query as QueryParams, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use perch_core::ErrorCode;
use serde::Deserialize;

use crate::store::{QUERY_LIMIT_DEFAULT, Query, Stored, TelemetryStore};

/// A comment line sent this often keeps idle watch streams (and proxies) open.
const WATCH_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

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
        .route("/v1/projects/{project}/telemetry:watch", get(watch))
        .with_state(store)
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    perch_api::error_response(code, message.into())
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

async fn watch(
    State(store): State<TelemetryStore>,
    Path(project): Path<String>,
    params: Result<QueryParams<Params>, axum::extract::rejection::QueryRejection>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;

    let q = match parse(project, params) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let wanted =
        move |project: &str, device: Option<&str>, registry: Option<&str>, sub: Option<&str>| {
            project == q.project
                && q.device_id.as_deref().is_none_or(|d| device == Some(d))
                && q.registry_id.as_deref().is_none_or(|r| registry == Some(r))
                && q.sub_folder.as_deref().is_none_or(|s| sub == Some(s))
        };
    let events = futures::stream::unfold(store.watch(), move |mut rx| {
        let wanted = wanted.clone();
        async move {
            loop {
                let event = match rx.recv().await {
                    Ok(Stored::Point { project, point }) => wanted(
                        &project,
                        point.device_id.as_deref(),
                        point.device_registry_id.as_deref(),
                        point.sub_folder.as_deref(),
                    )
                    .then(|| Event::default().event("point").json_data(&point)),
                    Ok(Stored::Anomaly { project, anomaly }) => wanted(
                        &project,
                        Some(&anomaly.device_id),
                        anomaly.device_registry_id.as_deref(),
                        anomaly.sub_folder.as_deref(),
                    )
                    .then(|| Event::default().event("anomaly").json_data(&anomaly)),
                    // Too slow to keep up: say so, and go on from the newest.
                    Err(RecvError::Lagged(missed)) => Some(Ok(Event::default()
                        .event("lagged")
                        .data(missed.to_string()))),
                    Err(RecvError::Closed) => return None,
                };
                if let Some(event) = event {
                    return Some((event, rx));
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(WATCH_KEEP_ALIVE))
        .into_response()
}
