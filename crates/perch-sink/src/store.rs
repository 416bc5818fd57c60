//! The SQLite file the sink writes and queries read: one row per message, the trusted device
//! attributes as indexed columns, the payload as it arrived, every attribute as JSON; beside it
//! the anomaly models' state (`series`) and what they flagged (`anomalies`), written in the
//! same transaction as the rows they judged.
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

use crate::model::{Series, numeric_fields};
use crate::{Error, Result};

/// Most points one query returns.
pub const QUERY_LIMIT_MAX: usize = 10_000;
/// Rows one retention delete removes before letting the sink write again.
const PURGE_SLICE: usize = 5_000;
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
CREATE TABLE IF NOT EXISTS series (
    key   TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    mean  REAL    NOT NULL,
    var   REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS anomalies (
    id                 INTEGER PRIMARY KEY,
    project            TEXT    NOT NULL,
    subscription       TEXT    NOT NULL,
    message_id         INTEGER NOT NULL,
    publish_time_ms    INTEGER NOT NULL,
    device_id          TEXT    NOT NULL,
    device_registry_id TEXT,
    sub_folder         TEXT,
    field              TEXT    NOT NULL,
    value              REAL    NOT NULL,
    mean               REAL    NOT NULL,
    std                REAL    NOT NULL,
    z                  REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS anomalies_by_device ON anomalies (project, device_id, publish_time_ms);
CREATE INDEX IF NOT EXISTS anomalies_by_time ON anomalies (project, publish_time_ms);
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

impl Point {
    /// A point as queries return it, from its stored parts.
    fn new(
        message_id: u64,
        publish_time: DateTime<Utc>,
        topic: String,
        attributes: BTreeMap<String, String>,
        data: &[u8],
    ) -> Point {
        let a = |k: &str| attributes.get(k).cloned();
        Point {
            message_id: message_id.to_string(),
            publish_time,
            topic,
            device_id: a("deviceId"),
            device_num_id: a("deviceNumId"),
            device_registry_id: a("deviceRegistryId"),
            device_registry_location: a("deviceRegistryLocation"),
            sub_folder: a("subFolder"),
            json: serde_json::from_slice(data).ok(),
            data: STANDARD.encode(data),
            attributes,
        }
    }

    fn from_row(r: &Row) -> Point {
        Point::new(
            r.message_id,
            r.publish_time,
            r.topic.clone(),
            r.attributes.clone(),
            &r.data,
        )
    }
}

/// A reading an anomaly model flagged (JSON: camelCase).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Anomaly {
    pub message_id: String,
    pub publish_time: DateTime<Utc>,
    pub device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_registry_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_folder: Option<String>,
    /// The payload field, e.g. `temperature_c`.
    pub field: String,
    pub value: f64,
    /// What the model expected: its mean and standard deviation before this reading.
    pub mean: f64,
    pub std: f64,
    /// (value - mean) / std.
    pub z: f64,
}

/// What the store announces once a batch is committed (the dashboard's live feed).
#[derive(Debug, Clone)]
pub enum Stored {
    Point { project: String, point: Point },
    Anomaly { project: String, anomaly: Anomaly },
}

/// Announcements buffered per live watcher; a watcher further behind skips ahead.
pub const LIVE_BUFFER: usize = 4_096;

/// The telemetry file; cheap to clone. Calls block: run them off the async workers.
#[derive(Debug, Clone)]
pub struct TelemetryStore {
    /// The sink's writes.
    conn: Arc<Mutex<Connection>>,
    /// Queries, on a connection of their own: in WAL mode they never wait for a write.
    reader: Arc<Mutex<Connection>>,
    live: tokio::sync::broadcast::Sender<Stored>,
}

impl TelemetryStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<TelemetryStore> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(TelemetryStore {
            conn: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
            live: tokio::sync::broadcast::channel(LIVE_BUFFER).0,
        })
    }

    /// Everything stored from now on, as it is committed.
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<Stored> {
        self.live.subscribe()
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| Error::Other("a writer panicked while holding the store".into()))
    }

    fn reader(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        self.reader
            .lock()
            .map_err(|_| Error::Other("a query panicked while holding the store".into()))
    }

    /// Stores a batch in one durable transaction; a message already stored (same subscription
    /// and message id: a redelivery or a replay) is skipped. Returns how many were new.
    pub fn insert(&self, rows: &[Row]) -> Result<usize> {
        let mut conn = self.conn()?;
        let txn = conn.transaction()?;
        let mut added = 0;
        let mut announced = Vec::new();
        let mut anomalies = 0;
        {
            let mut stmt = txn.prepare_cached(
                "INSERT OR IGNORE INTO telemetry (subscription, message_id, project, topic,
                    publish_time_ms, device_id, device_num_id, device_registry_id,
                    device_registry_location, sub_folder, data, attributes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for r in rows {
                let a = |k: &str| r.attributes.get(k).cloned();
                let inserted = stmt.execute(params![
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
                // A message seen before (redelivery, replay) was judged already.
                if inserted == 1 {
                    let flagged = judge(&txn, r)?;
                    anomalies += flagged.len();
                    if self.live.receiver_count() > 0 {
                        announced.push(Stored::Point {
                            project: r.project.clone(),
                            point: Point::from_row(r),
                        });
                        announced.extend(flagged.into_iter().map(|anomaly| Stored::Anomaly {
                            project: r.project.clone(),
                            anomaly,
                        }));
                    }
                }
                added += inserted;
            }
        }
        txn.commit()?;
        metrics::counter!("perch_sink_rows_total").increment(added as u64);
        metrics::counter!("perch_anomalies_total").increment(anomalies as u64);
        for event in announced {
            // No watcher left: nothing to tell.
            let _ = self.live.send(event);
        }
        Ok(added)
    }

    /// Deletes telemetry and anomalies published before `cutoff` (retention), a slice at a time
    /// so the sink's writes are never held up for long; returns the telemetry rows deleted.
    pub fn purge_before(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        let ms = cutoff.timestamp_millis();
        let mut deleted = 0;
        for table in ["telemetry", "anomalies"] {
            loop {
                let n = self.conn()?.execute(
                    &format!(
                        "DELETE FROM {table} WHERE id IN
                           (SELECT id FROM {table} WHERE publish_time_ms < ?1 LIMIT {PURGE_SLICE})"
                    ),
                    params![ms],
                )?;
                if table == "telemetry" {
                    deleted += n;
                }
                if n < PURGE_SLICE {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    /// What the anomaly models flagged, newest `q.limit` of the range, oldest first
    /// (`registry_id` and `sub_folder` filter as in [`TelemetryStore::query`]).
    pub fn anomalies(&self, q: &Query) -> Result<Vec<Anomaly>> {
        let (filter, args) = where_clause(q);
        let sql = format!(
            "SELECT message_id, publish_time_ms, device_id, device_registry_id, sub_folder, field,
                    value, mean, std, z
             FROM anomalies {filter} ORDER BY publish_time_ms DESC, id DESC LIMIT ?"
        );
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut found = stmt
            .query_map(rusqlite::params_from_iter(args), |row| {
                Ok(Anomaly {
                    message_id: row.get::<_, i64>(0)?.to_string(),
                    publish_time: millis(row.get(1)?),
                    device_id: row.get(2)?,
                    device_registry_id: row.get(3)?,
                    sub_folder: row.get(4)?,
                    field: row.get(5)?,
                    value: row.get(6)?,
                    mean: row.get(7)?,
                    std: row.get(8)?,
                    z: row.get(9)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<Anomaly>>>()?;
        found.reverse();
        Ok(found)
    }

    /// The newest `q.limit` points matching `q`, oldest first.
    pub fn query(&self, q: &Query) -> Result<Vec<Point>> {
        let (filter, args) = where_clause(q);
        let sql = format!(
            "SELECT message_id, publish_time_ms, topic, data, attributes
             FROM telemetry {filter} ORDER BY publish_time_ms DESC, id DESC LIMIT ?"
        );
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut points = stmt
            .query_map(rusqlite::params_from_iter(args), |row| {
                let data: Vec<u8> = row.get(3)?;
                let attributes: String = row.get(4)?;
                Ok(Point::new(
                    row.get::<_, i64>(0)? as u64,
                    millis(row.get(1)?),
                    row.get(2)?,
                    serde_json::from_str(&attributes).unwrap_or_default(),
                    &data,
                ))
            })?
            .collect::<rusqlite::Result<Vec<Point>>>()?;
        points.reverse();
        Ok(points)
    }
}

fn millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// `WHERE …` for a query's filters, with its arguments, the page size last.
fn where_clause(q: &Query) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = String::from("WHERE project = ?");
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
    args.push((q.limit.clamp(1, QUERY_LIMIT_MAX) as i64).into());
    (sql, args)
}

/// Runs the anomaly models of a newly stored row's numeric fields, inside its transaction;
/// returns what they flagged.
fn judge(txn: &rusqlite::Transaction<'_>, r: &Row) -> Result<Vec<Anomaly>> {
    let mut flagged = Vec::new();
    let Some(device) = r.attributes.get("deviceId") else {
        return Ok(flagged);
    };
    let registry = r.attributes.get("deviceRegistryId");
    let sub_folder = r.attributes.get("subFolder");
    for (field, value) in numeric_fields(&r.data) {
        // Per sink subscription: a second one (say, replaying history from the start) learns its
        // own models instead of feeding the same readings to the first one's again.
        let key = format!(
            "{}/{}/{device}/{}/{field}",
            r.subscription,
            registry.map_or("", String::as_str),
            sub_folder.map_or("", String::as_str)
        );
        let mut series: Series = txn
            .query_row(
                "SELECT count, mean, var FROM series WHERE key = ?1",
                params![key],
                |row| {
                    Ok(Series {
                        count: row.get::<_, i64>(0)? as u64,
                        mean: row.get(1)?,
                        var: row.get(2)?,
                    })
                },
            )
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(Series::default()),
                e => Err(e),
            })?;
        if let Some(o) = series.observe(value) {
            txn.prepare_cached(
                "INSERT INTO anomalies (project, subscription, message_id, publish_time_ms,
                    device_id, device_registry_id, sub_folder, field, value, mean, std, z)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                r.project,
                r.subscription,
                r.message_id as i64,
                r.publish_time.timestamp_millis(),
                device,
                registry,
                sub_folder,
                field,
                value,
                o.mean,
                o.std,
                o.z,
            ])?;
            flagged.push(Anomaly {
                message_id: r.message_id.to_string(),
                publish_time: r.publish_time,
                device_id: device.clone(),
                device_registry_id: registry.cloned(),
                sub_folder: sub_folder.cloned(),
                field: field.clone(),
                value,
                mean: o.mean,
                std: o.std,
                z: o.z,
            });
        }
        txn.prepare_cached(
            "INSERT OR REPLACE INTO series (key, count, mean, var) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![key, series.count as i64, series.mean, series.var])?;
    }
    Ok(flagged)
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
    fn a_glitch_is_flagged_once_and_models_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let store = TelemetryStore::open(&path).unwrap();
        let wobble = |i: u64| 21.0 + [0.0, 0.06, -0.06, 0.12, -0.1][i as usize % 5];
        let readings: Vec<Row> = (1..=30)
            .map(|i| {
                let body = format!(r#"{{"temperature_c": {}}}"#, wobble(i));
                row("s", i, "pi-1", i as i64 * 1000, &body)
            })
            .collect();
        store.insert(&readings).unwrap();
        drop(store);
        let store = TelemetryStore::open(&path).unwrap();
        let glitch = row("s", 31, "pi-1", 31_000, r#"{"temperature_c": 85.0}"#);
        store.insert(std::slice::from_ref(&glitch)).unwrap();
        store.insert(&[glitch]).unwrap(); // redelivered: not judged again
        let q = Query {
            project: "p".into(),
            limit: 10,
            ..Default::default()
        };
        let found = store.anomalies(&q).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        let a = &found[0];
        assert_eq!(
            (a.message_id.as_str(), a.device_id.as_str()),
            ("31", "pi-1")
        );
        assert_eq!((a.field.as_str(), a.value), ("temperature_c", 85.0));
        assert!(a.z > 4.0 && (a.mean - 21.0).abs() < 0.1, "{a:?}");
        let other = Query {
            device_id: Some("pi-2".into()),
            ..q
        };
        assert!(store.anomalies(&other).unwrap().is_empty());
    }

    #[test]
    fn retention_deletes_only_what_is_older_than_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = TelemetryStore::open(&dir.path().join("t.sqlite")).unwrap();
        let rows: Vec<Row> = (1..=12_000)
            .map(|i| row("s", i, "pi-1", i as i64 * 1000, "{}"))
            .collect();
        store.insert(&rows).unwrap();
        let cutoff = Utc.timestamp_millis_opt(11_000 * 1000).unwrap();
        assert_eq!(store.purge_before(cutoff).unwrap(), 10_999);
        let q = Query {
            project: "p".into(),
            limit: QUERY_LIMIT_MAX,
            ..Default::default()
        };
        let left: Vec<String> = store
            .query(&q)
            .unwrap()
            .into_iter()
            .map(|p| p.message_id)
            .collect();
        assert_eq!(left.len(), 1_001);
        assert_eq!(left[0], "11000");
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
