//! The file: its tables (`SCHEMA`), what older files lack (`migrate_series`), and its mode
//! (owner-only, with SQLite's `-wal` and `-shm` beside it).

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use crate::{Error, Result};

/// Mode of `telemetry.sqlite` (SQLite gives its `-wal` and `-shm` files the same): the owner's only.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

pub(super) const SCHEMA: &str = "
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

/// Adds what older files lack to table `series`: the owning device (for
/// [`super::SERIES_PER_DEVICE_MAX`]) and the last update (for retention). Older series get the device
/// on their next update, and count as updated `now`.
pub(super) fn migrate_series(conn: &Connection, now: DateTime<Utc>) -> Result<()> {
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
            now.timestamp_millis()
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
pub(super) fn restrict_mode(path: &Path) -> Result<()> {
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
    use super::super::TelemetryStore;
    use super::super::testing::row;
    use super::*;

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

    #[test]
    fn series_of_an_older_file_count_as_updated_at_the_clocks_now() {
        use chrono::TimeZone;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE series (key TEXT PRIMARY KEY, count INTEGER NOT NULL,
                   mean REAL NOT NULL, var REAL NOT NULL);
                 INSERT INTO series VALUES ('s//pi/temperature/t', 3, 21.0, 0.5);",
            )
            .unwrap();
        let now = Utc.with_ymd_and_hms(2031, 5, 6, 7, 8, 9).unwrap();
        let clock = perch_core::ManualClock::new(now);
        drop(TelemetryStore::open_with_clock(&path, &clock).unwrap());
        let updated: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT updated_ms FROM series", [], |r| r.get(0))
            .unwrap();
        assert_eq!(updated, now.timestamp_millis());
    }
}
