//! The telemetry sink (DESIGN.md "sink"): a Pub/Sub consumer like any other that keeps every
//! message of its subscriptions, with the trusted device attributes the bridge set, in a
//! queryable SQLite file in the data dir (`telemetry.sqlite`).
//!
//! - [`store`] owns the SQLite file: schema, idempotent batch inserts, queries.
//! - [`model`] is the anomaly model each (device, payload field) series gets.
//! - [`runner`] finds the sink's subscriptions (id `perch-sink-…`, made by `perch telemetry sink
//!   create`), pulls them and acknowledges a batch only once it is committed to disk.
//! - [`dashboard`] serves the web page that charts it live (`/dashboard`).
//! - [`rest`] serves `GET /v1/projects/{p}/telemetry` and `…/anomalies` on the admin listener.
//!
//! A subscription is the sink's cursor, so Pub/Sub's own tools apply: `seek` replays history
//! into the store (duplicates are ignored by `(subscription, messageId)`), deleting the
//! subscription stops the sink for that topic.

pub mod dashboard;
pub mod model;
pub mod rest;
pub mod runner;
pub mod store;

pub use runner::{SINK_SUBSCRIPTION_PREFIX, Sink};
pub use store::{Anomaly, Point, Query, TelemetryStore};

/// What the telemetry store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("telemetry store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("telemetry store: {0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
