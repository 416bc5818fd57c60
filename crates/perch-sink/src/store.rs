//! The SQLite file the sink writes and queries read: one row per message, the trusted device
//! attributes as indexed columns, the payload as it arrived, every attribute as JSON.
//!
//! WAL mode with `synchronous = FULL`: a batch is on disk when `insert` returns, and readers
//! (the REST API, or `sqlite3 DIR/telemetry.sqlite` next to a running server) never block the
//! writer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, params};
use serde::Serialize;

use crate::{Error, Result};

/// Most points one query returns.
pub const QUERY_LIMIT_MAX: usize = 10_000;
/// Points a query returns when it names no limit.
pub const QUERY_LIMIT_DEFAULT: usize = 1_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS telemetry (
    id                     INTEGER PRIMARY KEY,
    subscription           TEXT    NOT NULL,
    message_id             INTEGER NOT NULL,
    project                TEXT    NOT NULL,
    topic                  TEXT    NOT NULL,
    publish_time_ms        INTEGER NOT NULL,
    device_id              TEXT,
    device_num_id          TEXT,
    device_registry_id     TEXT,
    device_registry_location TEXT,
    sub_folder             TEXT,
    data                   BLOB    NOT NULL,
    attributes             TEXT    NOT NULL,
    UNIQUE (subscription, message_id)
);
CREATE INDEX IF NOT EXISTS telemetry_by_device ON telemetry (project, device_id, publish_time_ms);
CREATE INDEX IF NOT EXISTS telemetry_by_time ON telemetry (project, publish_time_ms);
";

/// A message to keep: where it came from and what it carried.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The sink subscription it was pulled from (`projects/P/subscriptions/S`).
    pub subscription: String,
    /// Its Pub/Sub message id (the topic's sequence number).
    pub message_id: u64,
    pub project: String,
    pub topic: String,
    pub publish_time: DateTime<Utc>,
    pub attributes: BTreeMap<String, String>,
    pub data: Vec<u8>,
}

/// Which points a query wants; `project` is required, the rest narrow it.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub project: String,
    pub device_id: Option<String>,
    pub registry_id: Option<String>,
    pub sub_folder: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The newest `limit` points of the range are returned, oldest first.
    pub limit: usize,
}

/// One stored message as queries return it (JSON: camelCase, like Pub/Sub's).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    pub message_id: String,
    pub publish_time: DateTime<Utc>,
    pub topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_num_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_registry_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_registry_location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_folder: Option<String>,
    pub attributes: BTreeMap<String, String>,
    /// The payload, base64 (as in Pub/Sub's JSON).
    pub data: String,
    /// The payload parsed, when it is JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
}

/// The telemetry file; cheap to clone. Calls block: run them off the async workers.
#[derive(Debug, Clone)]
pub struct TelemetryStore {
    conn: Arc<Mutex<Connection>>,
}

impl TelemetryStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<TelemetryStore> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(TelemetryStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| Error::Other("a writer panicked while holding the store".into()))
    }

    /// Stores a batch in one durable transaction; a message already stored (same subscription
    /// and message id: a redelivery or a replay) is skipped. Returns how many were new.
    pub fn insert(&self, rows: &[Row]) -> Result<usize> {
        let mut conn = self.conn()?;
        let txn = conn.transaction()?;
        let mut added = 0;
        {
            let mut stmt = txn.prepare_cached(
                "INSERT OR IGNORE INTO telemetry (subscription, message_id, project, topic,
                    publish_time_ms, device_id, device_num_id, device_registry_id,
                    device_registry_location, sub_folder, data, attributes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for r in rows {
                let a = |k: &str| r.attributes.get(k).cloned();
                added += stmt.execute(params![
                    r.subscription,
                    r.message_id as i64,
                    r.project,
                    r.topic,
                    r.publish_time.timestamp_millis(),
                    a("deviceId"),
                    a("deviceNumId"),
                    a("deviceRegistryId"),
                    a("deviceRegistryLocation"),
                    a("subFolder"),
                    r.data,
                    serde_json::to_string(&r.attributes).unwrap_or_else(|_| "{}".into()),
                ])?;
            }
        }
        txn.commit()?;
        Ok(added)
    }

    /// The newest `q.limit` points matching `q`, oldest first.
    pub fn query(&self, q: &Query) -> Result<Vec<Point>> {
        let mut sql = String::from(
            "SELECT message_id, publish_time_ms, topic, device_id, device_num_id,
                    device_registry_id, device_registry_location, sub_folder, attributes, data
             FROM telemetry WHERE project = ?",
        );
        let mut args: Vec<rusqlite::types::Value> = vec![q.project.clone().into()];
        for (column, value) in [
            ("device_id", &q.device_id),
            ("device_registry_id", &q.registry_id),
            ("sub_folder", &q.sub_folder),
        ] {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                args.push(v.clone().into());
            }
        }
        if let Some(t) = q.since {
            sql.push_str(" AND publish_time_ms >= ?");
            args.push(t.timestamp_millis().into());
        }
        if let Some(t) = q.until {
            sql.push_str(" AND publish_time_ms < ?");
            args.push(t.timestamp_millis().into());
        }
        sql.push_str(" ORDER BY publish_time_ms DESC, id DESC LIMIT ?");
        args.push((q.limit.clamp(1, QUERY_LIMIT_MAX) as i64).into());

        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut points = stmt
            .query_map(rusqlite::params_from_iter(args), |row| {
                let data: Vec<u8> = row.get(9)?;
                let attributes: String = row.get(8)?;
                Ok(Point {
                    message_id: row.get::<_, i64>(0)?.to_string(),
                    publish_time: Utc
                        .timestamp_millis_opt(row.get(1)?)
                        .single()
                        .unwrap_or_default(),
                    topic: row.get(2)?,
                    device_id: row.get(3)?,
                    device_num_id: row.get(4)?,
                    device_registry_id: row.get(5)?,
                    device_registry_location: row.get(6)?,
                    sub_folder: row.get(7)?,
                    attributes: serde_json::from_str(&attributes).unwrap_or_default(),
                    json: serde_json::from_slice(&data).ok(),
                    data: STANDARD.encode(&data),
                })
            })?
            .collect::<rusqlite::Result<Vec<Point>>>()?;
        points.reverse();
        Ok(points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sub: &str, id: u64, device: &str, ms: i64, data: &str) -> Row {
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

    #[test]
    fn batches_are_idempotent_and_queries_filter_and_keep_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let store = TelemetryStore::open(&path).unwrap();
        let rows = vec![
            row("s", 1, "pi-1", 1_000, r#"{"temperature_c": 20.5}"#),
            row("s", 2, "pi-2", 2_000, "not json"),
            row("s", 3, "pi-1", 3_000, r#"{"temperature_c": 21.0}"#),
        ];
        assert_eq!(store.insert(&rows).unwrap(), 3);
        // A redelivery of the same messages adds nothing.
        assert_eq!(store.insert(&rows[1..]).unwrap(), 0);
        drop(store);

        let store = TelemetryStore::open(&path).unwrap();
        let mut q = Query {
            project: "p".into(),
            device_id: Some("pi-1".into()),
            limit: 10,
            ..Default::default()
        };
        let got = store.query(&q).unwrap();
        assert_eq!(
            got.iter()
                .map(|p| p.message_id.as_str())
                .collect::<Vec<_>>(),
            ["1", "3"]
        );
        assert_eq!(got[1].json.as_ref().unwrap()["temperature_c"], 21.0);
        assert_eq!(got[0].sub_folder.as_deref(), Some("temperature"));
        q.limit = 1;
        assert_eq!(store.query(&q).unwrap()[0].message_id, "3", "the newest");
        q.device_id = None;
        q.limit = 10;
        q.since = Some(Utc.timestamp_millis_opt(2_000).unwrap());
        let got = store.query(&q).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].json, None,
            "a payload that is not JSON stays bytes only"
        );
        q.project = "other".into();
        assert!(store.query(&q).unwrap().is_empty());
    }
}
