//! What the store's tests share.

use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use rusqlite::{Connection, params};

use super::{QUERY_LIMIT_MAX, Query, Row, TelemetryStore};

/// A message from `device` (subfolder `temperature`) published at `ms`.
pub(super) fn row(sub: &str, id: u64, device: &str, ms: i64, data: &str) -> Row {
    Row {
        subscription: sub.into(),
        message_id: id,
        project: "p".into(),
        topic: "projects/p/topics/t".into(),
        publish_time: Utc.timestamp_millis_opt(ms).unwrap(),
        attributes: [
            ("deviceId".to_owned(), device.to_owned()),
            ("subFolder".to_owned(), "temperature".to_owned()),
        ]
        .into(),
        data: data.as_bytes().to_vec(),
    }
}

/// How many model series a device key has.
pub(super) fn series_count(path: &Path, device_key: &str) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM series WHERE device_key = ?1",
            params![device_key],
            |r| r.get(0),
        )
        .unwrap()
}

/// The message ids stored for `device`, oldest first.
pub(super) fn stored(store: &TelemetryStore, device: &str) -> Vec<String> {
    let q = Query {
        project: "p".into(),
        device_id: Some(device.into()),
        limit: QUERY_LIMIT_MAX,
        ..Default::default()
    };
    let points = store.query(&q).unwrap();
    points.into_iter().map(|p| p.message_id).collect()
}

/// A new store in a temporary directory (kept while the directory lives), and its path.
pub(super) fn temp_store() -> (tempfile::TempDir, PathBuf, TelemetryStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sqlite");
    let store = TelemetryStore::open(&path).unwrap();
    (dir, path, store)
}
