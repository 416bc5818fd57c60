//! The SQLite file the sink writes and queries read: one row per message, the trusted device
//! attributes as indexed columns, the payload as it arrived, every attribute as JSON; beside it
//! the anomaly models' state (`series`) and what they flagged (`anomalies`), written in the
//! same transaction as the rows they judged.
//!
//! WAL mode with `synchronous = FULL`: a batch is on disk when `insert` returns, and readers
//! (the REST API, or `sqlite3 DIR/telemetry.sqlite` next to a running server) never block the
//! writer. The file (and SQLite's `-wal` and `-shm` beside it, which take its mode) is owner-only.
//!
//! One message never blocks a batch: each is written under a savepoint of its own. A message
//! whose model update fails is stored unmodelled; one that cannot be stored at all is recorded in
//! `rejected`. Only a failure of the store itself (disk, I/O, locks) fails the batch, which is
//! then retried. Series are bounded: [`crate::model::MODEL_FIELDS_PER_MESSAGE_MAX`] per message,
//! [`SERIES_PER_DEVICE_MAX`] per device, and the retention pass deletes idle ones.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, params};
use serde::Serialize;

use crate::model::{Series, modelled_fields};
use crate::{Error, Result};

/// Most points one query returns.
pub const QUERY_LIMIT_MAX: usize = 10_000;
/// Rows one retention delete removes before letting the sink write again.
const PURGE_SLICE: usize = 5_000;
/// Points a query returns when it names no limit.
pub const QUERY_LIMIT_DEFAULT: usize = 1_000;
/// Model series one device may have per sink subscription (all subfolders and fields together);
/// a new series beyond it replaces that device's least recently updated one, so a device that
/// keeps inventing field names churns only its own models. Default 256.
pub const SERIES_PER_DEVICE_MAX: usize = 256;
/// Mode of `telemetry.sqlite` (SQLite gives its `-wal` and `-shm` files the same): the owner's only.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

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
    key        TEXT PRIMARY KEY,
    count      INTEGER NOT NULL,
    mean       REAL    NOT NULL,
    var        REAL    NOT NULL,
    device_key TEXT    NOT NULL DEFAULT '',
    updated_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rejected (
    id              INTEGER PRIMARY KEY,
    subscription    TEXT    NOT NULL,
    message_id      INTEGER NOT NULL,
    publish_time_ms INTEGER NOT NULL,
    error           TEXT    NOT NULL,
    data            BLOB    NOT NULL,
    attributes      TEXT    NOT NULL,
    UNIQUE (subscription, message_id)
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
        restrict_mode(path)?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        migrate_series(&conn)?;
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
    ///
    /// Each message is written under a savepoint: one whose models cannot be updated is stored
    /// unmodelled, one that cannot be stored at all is recorded in `rejected`, and the rest of the
    /// batch goes on. Only a failure of the store itself is returned (nothing of the batch is
    /// then kept, and the caller retries it).
    pub fn insert(&self, rows: &[Row]) -> Result<usize> {
        let mut conn = self.conn()?;
        let mut txn = conn.transaction()?;
        let mut tally = Tally::default();
        let mut announced = Vec::new();
        for r in rows {
            let written = match write_row(&mut txn, r, Modelling::On) {
                Err(e) if !is_store_failure(&e) => {
                    let unmodelled = write_row(&mut txn, r, Modelling::Off);
                    if unmodelled.is_ok() {
                        tracing::warn!(subscription = %r.subscription, message_id = r.message_id,
                            error = %e, "telemetry stored without its anomaly models");
                        tally.unmodelled += 1;
                    }
                    unmodelled
                }
                other => other,
            };
            let judged = match written {
                Ok(judged) => judged,
                Err(e) if !is_store_failure(&e) => {
                    tracing::error!(subscription = %r.subscription, message_id = r.message_id,
                        error = %e, "telemetry message cannot be stored; recorded in table rejected");
                    reject(&txn, r, &e)?;
                    tally.rejected += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // A message seen before (redelivery, replay) was stored and judged already.
            let Some(judged) = judged else { continue };
            tally.added += 1;
            tally.add(&judged);
            if self.live.receiver_count() > 0 {
                announced.push(Stored::Point {
                    project: r.project.clone(),
                    point: Point::from_row(r),
                });
                announced.extend(judged.anomalies.into_iter().map(|anomaly| Stored::Anomaly {
                    project: r.project.clone(),
                    anomaly,
                }));
            }
        }
        txn.commit()?;
        tally.record();
        for event in announced {
            // No watcher left: nothing to tell.
            let _ = self.live.send(event);
        }
        Ok(tally.added)
    }

    /// Deletes telemetry, anomalies and rejected messages published before `cutoff`, and model
    /// series last updated by a message published before it (retention), a slice at a time so
    /// the sink's writes are never held up for long.
    pub fn purge_before(&self, cutoff: DateTime<Utc>) -> Result<Purged> {
        let ms = cutoff.timestamp_millis();
        let mut purged = Purged::default();
        for (table, column) in [
            ("telemetry", "publish_time_ms"),
            ("anomalies", "publish_time_ms"),
            ("rejected", "publish_time_ms"),
            ("series", "updated_ms"),
        ] {
            let key = if table == "series" { "key" } else { "id" };
            loop {
                let n = self.conn()?.execute(
                    &format!(
                        "DELETE FROM {table} WHERE {key} IN
                           (SELECT {key} FROM {table} WHERE {column} < ?1 LIMIT {PURGE_SLICE})"
                    ),
                    params![ms],
                )?;
                match table {
                    "telemetry" => purged.rows += n,
                    "series" => purged.series += n,
                    _ => {}
                }
                if n < PURGE_SLICE {
                    break;
                }
            }
        }
        metrics::counter!("perch_sink_series_expired_total").increment(purged.series as u64);
        Ok(purged)
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

/// Whether a row's numeric fields feed the anomaly models.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Modelling {
    On,
    Off,
}

/// What one batch did, for `/metrics`.
#[derive(Debug, Default)]
struct Tally {
    added: usize,
    anomalies: usize,
    restarts: usize,
    fields_unmodelled: usize,
    evicted: usize,
    /// Messages stored without modelling, because their model update failed.
    unmodelled: usize,
    /// Messages that could not be stored (recorded in `rejected`).
    rejected: usize,
}

impl Tally {
    fn add(&mut self, j: &Judged) {
        self.anomalies += j.anomalies.len();
        self.restarts += j.restarts;
        self.fields_unmodelled += j.fields_unmodelled;
        self.evicted += j.evicted;
    }

    /// Counts a committed batch.
    fn record(&self) {
        for (name, n) in [
            ("perch_sink_rows_total", self.added),
            ("perch_anomalies_total", self.anomalies),
            ("perch_sink_series_restarts_total", self.restarts),
            ("perch_sink_fields_unmodelled_total", self.fields_unmodelled),
            ("perch_sink_series_evicted_total", self.evicted),
            ("perch_sink_messages_unmodelled_total", self.unmodelled),
            ("perch_sink_messages_rejected_total", self.rejected),
        ] {
            metrics::counter!(name).increment(n as u64);
        }
    }
}

/// What one retention pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Purged {
    /// Telemetry rows.
    pub rows: usize,
    /// Model series.
    pub series: usize,
}

/// What the models made of one newly stored row.
#[derive(Debug, Default)]
struct Judged {
    anomalies: Vec<Anomaly>,
    /// Series that started over (see [`Series::observe`]).
    restarts: usize,
    /// Numeric fields past [`crate::model::MODEL_FIELDS_PER_MESSAGE_MAX`].
    fields_unmodelled: usize,
    /// Series replaced under [`SERIES_PER_DEVICE_MAX`].
    evicted: usize,
}

/// Whether `e` is a failure of the store itself (disk, I/O, locks, memory) rather than of one
/// message: the batch then fails and is retried, where a message's own failure is recorded and
/// the batch goes on.
fn is_store_failure(e: &Error) -> bool {
    use rusqlite::ErrorCode as C;
    match e {
        Error::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
            f.code,
            C::DiskFull
                | C::SystemIoFailure
                | C::DatabaseBusy
                | C::DatabaseLocked
                | C::OutOfMemory
                | C::ReadOnly
                | C::DatabaseCorrupt
                | C::NotADatabase
                | C::CannotOpen
                | C::PermissionDenied
                | C::FileLockingProtocolFailed
                | C::NoLargeFileSupport
                | C::OperationInterrupted
        ),
        Error::Sqlite(_) => false,
        Error::Other(_) => true,
    }
}

/// Writes one row, and runs its models if `modelling` says so, under a savepoint: on error
/// nothing of it stays. `None`: the row was stored before.
fn write_row(
    txn: &mut rusqlite::Transaction<'_>,
    r: &Row,
    modelling: Modelling,
) -> Result<Option<Judged>> {
    let sp = txn.savepoint()?;
    let a = |k: &str| r.attributes.get(k).cloned();
    let inserted = sp
        .prepare_cached(
            "INSERT OR IGNORE INTO telemetry (subscription, message_id, project, topic,
                publish_time_ms, device_id, device_num_id, device_registry_id,
                device_registry_location, sub_folder, data, attributes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?
        .execute(params![
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
            attributes_json(r),
        ])?;
    let judged = match (inserted, modelling) {
        (0, _) => None,
        (_, Modelling::On) => Some(judge(&sp, r)?),
        (_, Modelling::Off) => Some(Judged::default()),
    };
    // Dropped without commit on any error above: rolled back.
    sp.commit()?;
    Ok(judged)
}

fn attributes_json(r: &Row) -> String {
    serde_json::to_string(&r.attributes).unwrap_or_else(|_| "{}".into())
}

/// Records a message the store could not keep, with why, in table `rejected`.
fn reject(txn: &rusqlite::Transaction<'_>, r: &Row, e: &Error) -> Result<()> {
    txn.prepare_cached(
        "INSERT OR REPLACE INTO rejected (subscription, message_id, publish_time_ms, error, data,
            attributes) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        r.subscription,
        r.message_id as i64,
        r.publish_time.timestamp_millis(),
        e.to_string(),
        r.data,
        attributes_json(r),
    ])?;
    Ok(())
}

/// Runs the anomaly models of a newly stored row's numeric fields, inside its transaction.
fn judge(conn: &Connection, r: &Row) -> Result<Judged> {
    let mut judged = Judged::default();
    let Some(device) = r.attributes.get("deviceId") else {
        return Ok(judged);
    };
    let registry = r.attributes.get("deviceRegistryId");
    let sub_folder = r.attributes.get("subFolder");
    // Per sink subscription: a second one (say, replaying history from the start) learns its
    // own models instead of feeding the same readings to the first one's again.
    let device_key = format!(
        "{}/{}/{device}",
        r.subscription,
        registry.map_or("", String::as_str)
    );
    let (fields, skipped) = modelled_fields(&r.data);
    judged.fields_unmodelled = skipped;
    let published_ms = r.publish_time.timestamp_millis();
    for (field, value) in fields {
        let key = format!(
            "{device_key}/{}/{field}",
            sub_folder.map_or("", String::as_str)
        );
        let mut series = match load_series(conn, &key)? {
            Some(series) => series,
            None => {
                judged.evicted += make_room(conn, &device_key)?;
                Series::default()
            }
        };
        let verdict = series.observe(value);
        judged.restarts += usize::from(verdict.restarted);
        if let Some(o) = verdict.outlier {
            let anomaly = Anomaly {
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
            };
            insert_anomaly(conn, r, &anomaly)?;
            judged.anomalies.push(anomaly);
        }
        conn.prepare_cached(
            "INSERT INTO series (key, count, mean, var, device_key, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (key) DO UPDATE SET count = excluded.count, mean = excluded.mean,
                var = excluded.var, device_key = excluded.device_key,
                updated_ms = excluded.updated_ms",
        )?
        .execute(params![
            key,
            series.count as i64,
            series.mean,
            series.var,
            device_key,
            published_ms
        ])?;
    }
    Ok(judged)
}

fn load_series(conn: &Connection, key: &str) -> Result<Option<Series>> {
    let found = conn
        .prepare_cached("SELECT count, mean, var FROM series WHERE key = ?1")?
        .query_row(params![key], |row| {
            // A value that is not a number (NULL from a hand-edited file) restarts the series.
            let number = |i: usize| -> rusqlite::Result<f64> {
                Ok(row.get::<_, Option<f64>>(i)?.unwrap_or(f64::NAN))
            };
            Ok(Series {
                count: row.get::<_, Option<i64>>(0)?.unwrap_or(0) as u64,
                mean: number(1)?,
                var: number(2)?,
            })
        });
    match found {
        Ok(series) => Ok(Some(series)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Before a device gets a new series: deletes its least recently updated ones so that it keeps
/// at most [`SERIES_PER_DEVICE_MAX`] with the new one. Returns how many were deleted.
fn make_room(conn: &Connection, device_key: &str) -> Result<usize> {
    let have: i64 = conn
        .prepare_cached("SELECT count(*) FROM series WHERE device_key = ?1")?
        .query_row(params![device_key], |row| row.get(0))?;
    let excess = (have as usize + 1).saturating_sub(SERIES_PER_DEVICE_MAX);
    if excess == 0 {
        return Ok(0);
    }
    let deleted = conn
        .prepare_cached(
            "DELETE FROM series WHERE key IN (SELECT key FROM series WHERE device_key = ?1
                ORDER BY updated_ms, key LIMIT ?2)",
        )?
        .execute(params![device_key, excess as i64])?;
    Ok(deleted)
}

fn insert_anomaly(conn: &Connection, r: &Row, a: &Anomaly) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO anomalies (project, subscription, message_id, publish_time_ms,
            device_id, device_registry_id, sub_folder, field, value, mean, std, z)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        r.project,
        r.subscription,
        r.message_id as i64,
        r.publish_time.timestamp_millis(),
        a.device_id,
        a.device_registry_id,
        a.sub_folder,
        a.field,
        a.value,
        a.mean,
        a.std,
        a.z,
    ])?;
    Ok(())
}

/// Adds what older files lack to table `series`: the owning device (for
/// [`SERIES_PER_DEVICE_MAX`]) and the last update (for retention). Older series get the device
/// on their next update, and count as updated now.
fn migrate_series(conn: &Connection) -> Result<()> {
    let current = conn
        .prepare("SELECT 1 FROM pragma_table_info('series') WHERE name = 'updated_ms'")?
        .exists([])?;
    if !current {
        conn.execute_batch(&format!(
            "BEGIN;
             ALTER TABLE series ADD COLUMN device_key TEXT NOT NULL DEFAULT '';
             ALTER TABLE series ADD COLUMN updated_ms INTEGER NOT NULL DEFAULT 0;
             UPDATE series SET updated_ms = {};
             COMMIT;",
            Utc::now().timestamp_millis()
        ))?;
    }
    // Only the device: an index on `updated_ms` would be rewritten by every reading, and the
    // hourly retention pass and the eviction of one device's oldest series can afford a scan.
    conn.execute_batch("CREATE INDEX IF NOT EXISTS series_by_device ON series (device_key);")?;
    Ok(())
}

/// Makes the store's files owner-only: creates the database file 0600 before SQLite does (SQLite
/// then gives its `-wal` and `-shm` files the same mode), and narrows files an older version left
/// readable by others.
fn restrict_mode(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let failed = |p: &Path, e: std::io::Error| {
            Error::Other(format!("cannot make {} owner-only: {e}", p.display()))
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(path)
            .map_err(|e| failed(path, e))?;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            let file = Path::new(&name);
            match std::fs::set_permissions(file, std::fs::Permissions::from_mode(FILE_MODE)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed(file, e)),
            }
        }
    }
    Ok(())
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
        assert_eq!(store.purge_before(cutoff).unwrap().rows, 10_999);
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

    fn series_count(path: &Path, device_key: &str) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM series WHERE device_key = ?1",
                params![device_key],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn stored(store: &TelemetryStore, device: &str) -> Vec<String> {
        let q = Query {
            project: "p".into(),
            device_id: Some(device.into()),
            limit: QUERY_LIMIT_MAX,
            ..Default::default()
        };
        let points = store.query(&q).unwrap();
        points.into_iter().map(|p| p.message_id).collect()
    }

    #[test]
    fn huge_readings_from_one_device_block_no_batch_and_leave_models_finite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let store = TelemetryStore::open(&path).unwrap();
        let mut rows: Vec<Row> = ["21", "1e308", "-1e308", "21", "21.1"]
            .iter()
            .enumerate()
            .map(|(i, t)| {
                row(
                    "s",
                    i as u64 + 1,
                    "bad",
                    i as i64,
                    &format!(r#"{{"t":{t}}}"#),
                )
            })
            .collect();
        rows.extend((6..=105).map(|i| row("s", i, "good", i as i64, r#"{"t": 20.5}"#)));
        assert_eq!(store.insert(&rows).unwrap(), 105);
        assert_eq!(stored(&store, "bad").len(), 5);
        assert_eq!(stored(&store, "good").len(), 100);
        let conn = Connection::open(&path).unwrap();
        let (mean, var): (f64, f64) = conn
            .query_row(
                "SELECT mean, var FROM series WHERE key = 's//bad/temperature/t'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(
            (mean - 21.05).abs() < 1e-9 && var.is_finite(),
            "{mean} {var}"
        );
    }

    #[test]
    fn a_message_whose_models_fail_is_stored_unmodelled_and_one_that_cannot_be_stored_is_recorded()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let store = TelemetryStore::open(&path).unwrap();
        // Real SQLite failures, one per message: a trigger refuses this device's series, another
        // this payload.
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER no_series BEFORE INSERT ON series WHEN NEW.key LIKE '%/unmodelled/%'
                   BEGIN SELECT RAISE(ABORT, 'refused series'); END;
                 CREATE TRIGGER no_row BEFORE INSERT ON telemetry WHEN NEW.data = CAST('poison' AS BLOB)
                   BEGIN SELECT RAISE(ABORT, 'refused row'); END;",
            )
            .unwrap();
        let rows = vec![
            row("s", 1, "unmodelled", 1, r#"{"t": 1}"#),
            row("s", 2, "pi", 2, "poison"),
            row("s", 3, "pi", 3, r#"{"t": 2}"#),
        ];
        assert_eq!(store.insert(&rows).unwrap(), 2);
        assert_eq!(stored(&store, "unmodelled"), ["1"]);
        assert_eq!(stored(&store, "pi"), ["3"]);
        assert_eq!(series_count(&path, "s//unmodelled"), 0);
        assert_eq!(series_count(&path, "s//pi"), 1);
        let (id, error, data): (i64, String, Vec<u8>) = Connection::open(&path)
            .unwrap()
            .query_row("SELECT message_id, error, data FROM rejected", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((id, data.as_slice()), (2, b"poison".as_slice()));
        assert!(error.contains("refused row"), "{error}");
    }

    #[test]
    fn series_are_capped_per_message_and_per_device_keeping_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let store = TelemetryStore::open(&path).unwrap();
        let fields = |from: usize, n: usize| {
            let body: serde_json::Map<String, serde_json::Value> = (from..from + n)
                .map(|i| (format!("f{i:05}"), serde_json::json!(i)))
                .collect();
            serde_json::to_string(&body).unwrap()
        };
        let wide = row("s", 1, "pi", 1, &fields(0, 3_000));
        store.insert(&[wide]).unwrap();
        let width = crate::model::MODEL_FIELDS_PER_MESSAGE_MAX;
        assert_eq!(series_count(&path, "s//pi"), width as i64);
        assert_eq!(stored(&store, "pi").len(), 1, "the row is stored whole");

        let rows: Vec<Row> = (0..SERIES_PER_DEVICE_MAX / width + 2)
            .map(|i| {
                row(
                    "s",
                    2 + i as u64,
                    "pi",
                    2 + i as i64,
                    &fields(10_000 + i * width, width),
                )
            })
            .chain([row("s", 100, "pi-2", 100, r#"{"t": 1}"#)])
            .collect();
        store.insert(&rows).unwrap();
        assert_eq!(series_count(&path, "s//pi"), SERIES_PER_DEVICE_MAX as i64);
        assert_eq!(
            series_count(&path, "s//pi-2"),
            1,
            "another device keeps its own"
        );
        let oldest: i64 = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT min(updated_ms) FROM series WHERE device_key = 's//pi'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let kept_messages = SERIES_PER_DEVICE_MAX / width;
        assert_eq!(
            oldest,
            2 + (rows.len() - 1 - kept_messages) as i64,
            "the newest are kept"
        );
    }

    #[test]
    fn retention_deletes_series_no_message_updated_since_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let store = TelemetryStore::open(&path).unwrap();
        store
            .insert(&[
                row("s", 1, "idle", 1_000, r#"{"t": 1}"#),
                row("s", 2, "busy", 1_000, r#"{"t": 1}"#),
                row("s", 3, "busy", 5_000, r#"{"t": 1}"#),
            ])
            .unwrap();
        let purged = store
            .purge_before(Utc.timestamp_millis_opt(2_000).unwrap())
            .unwrap();
        assert_eq!(purged, Purged { rows: 2, series: 1 });
        assert_eq!(series_count(&path, "s//idle"), 0);
        assert_eq!(series_count(&path, "s//busy"), 1);
    }

    #[test]
    fn series_of_an_older_file_are_kept_and_get_the_new_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE series (key TEXT PRIMARY KEY, count INTEGER NOT NULL,
                   mean REAL NOT NULL, var REAL NOT NULL);
                 INSERT INTO series VALUES ('s//pi/temperature/t', 30, 21.0, 1e999);",
            )
            .unwrap();
        let store = TelemetryStore::open(&path).unwrap();
        drop(store);
        let store = TelemetryStore::open(&path).unwrap();
        // The infinite variance an older version could store restarts the series.
        store
            .insert(&[row("s", 1, "pi", 1, r#"{"t": 22.0}"#)])
            .unwrap();
        let (count, mean, device_key): (i64, f64, String) = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count, mean, device_key FROM series", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((count, mean, device_key.as_str()), (1, 22.0, "s//pi"));
    }

    #[cfg(unix)]
    #[test]
    fn the_file_and_its_wal_and_shm_are_owner_only_even_if_an_older_version_made_them_0644() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let mode = |suffix: &str| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            std::fs::metadata(&name).unwrap().permissions().mode() & 0o777
        };
        let store = TelemetryStore::open(&path).unwrap();
        store.insert(&[row("s", 1, "pi", 1, "{}")]).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(mode(suffix), 0o600, "telemetry.sqlite{suffix}");
        }
        drop(store);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _store = TelemetryStore::open(&path).unwrap();
        assert_eq!(mode(""), 0o600);
    }
}
