//! The web dashboard (`GET /dashboard` on the admin listener): a static page with uPlot
//! (vendored, MIT, `web/vendor/uplot`) that charts stored telemetry per device and payload field
//! and follows `telemetry:watch` live. The files are compiled in; they hold no data, so they are
//! served without the admin token, and the page sends the token (kept in the tab's session
//! storage) with each API call.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("../web/index.html");
const SCRIPT: &str = include_str!("../web/dashboard.js");
const UPLOT_JS: &str = include_str!("../web/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../web/vendor/uplot/uPlot.min.css");

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// The dashboard's routes (public: static files only).
pub fn router() -> Router {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/dashboard/dashboard.js",
            get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard/uPlot.iife.min.js",
            get(|| async { file("text/javascript; charset=utf-8", UPLOT_JS) }),
        )
        .route(
            "/dashboard/uPlot.min.css",
            get(|| async { file("text/css; charset=utf-8", UPLOT_CSS) }),
        )
}
