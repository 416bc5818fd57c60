//! `GET /metrics` on the admin listener: every counter, gauge and histogram the crates record
//! through the `metrics` facade, in Prometheus text format (behind the admin token unless
//! `--dev`; docs/metrics.md lists them).
//!
//! One recorder per process, installed by the first server (tests run several in one process).

use std::sync::OnceLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of the group-commit batch size histogram (writes per fsync; at most 256).
const GROUP_COMMIT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (once); None when another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = match PrometheusBuilder::new().set_buckets_for_metric(
                Matcher::Full("perch_store_group_commit_writes".into()),
                GROUP_COMMIT_BUCKETS,
            ) {
                Ok(builder) => builder.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(_) => {
                    tracing::warn!(
                        "a metrics recorder was already installed; /metrics stays empty"
                    );
                    None
                }
            }
        })
        .clone()
}

/// The `/metrics` route.
pub fn router() -> Router {
    let handle = install();
    Router::new().route(
        "/metrics",
        get(move || {
            let text = handle.as_ref().map(|h| h.render()).unwrap_or_default();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
                    .into_response()
            }
        }),
    )
}
