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
//!
//! - `schema`: the tables, migrations of older files, the file's mode.
//! - `rows`: what goes in and comes out.
//! - `write`: storing a batch; `series`: the anomaly models' state and what they flag.
//! - `query`: reading points and anomalies back; `retention`: deleting what is too old.

mod query;
mod retention;
mod rows;
mod schema;
mod series;
#[cfg(test)]
mod testing;
mod write;

use std::path::Path;
use std::sync::{Arc, Mutex};

use perch_core::clock::{Clock, SystemClock};
use rusqlite::Connection;

pub use self::rows::{Anomaly, Point, Purged, Query, Row, Stored};
use crate::{Error, Result};

/// Most points one query returns.
pub const QUERY_LIMIT_MAX: usize = 10_000;
/// Points a query returns when it names no limit.
pub const QUERY_LIMIT_DEFAULT: usize = 1_000;
/// Model series one device may have per sink subscription (all subfolders and fields together);
/// a new series beyond it replaces that device's least recently updated one, so a device that
/// keeps inventing field names churns only its own models. Default 256.
pub const SERIES_PER_DEVICE_MAX: usize = 256;
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
        TelemetryStore::open_with_clock(path, &SystemClock)
    }

    /// `open`, reading "now" (which series of an older file count as updated at) from `clock`.
    pub fn open_with_clock(path: &Path, clock: &dyn Clock) -> Result<TelemetryStore> {
        schema::restrict_mode(path)?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(schema::SCHEMA)?;
        schema::migrate_series(&conn, clock.now())?;
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
}

#[cfg(test)]
mod tests {
    use super::testing::{row, temp_store};
    use super::*;

    #[test]
    fn a_glitch_is_flagged_once_and_models_survive_reopening() {
        let (_dir, path, store) = temp_store();
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
}
