//! Writing a batch: one durable transaction, each message under a savepoint of its own. A
//! message whose model update fails is stored unmodelled; one that cannot be stored at all is
//! recorded in `rejected`; only a failure of the store itself fails the batch.

use rusqlite::params;

use super::TelemetryStore;
use super::rows::{Anomaly, Point, Row, Stored};
use super::series::judge;
use crate::{Error, Result};

impl TelemetryStore {
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

/// What the models made of one newly stored row.
#[derive(Debug, Default)]
pub(super) struct Judged {
    pub(super) anomalies: Vec<Anomaly>,
    /// Series that started over (see [`Series::observe`]).
    pub(super) restarts: usize,
    /// Numeric fields past [`crate::model::MODEL_FIELDS_PER_MESSAGE_MAX`].
    pub(super) fields_unmodelled: usize,
    /// Series replaced under [`SERIES_PER_DEVICE_MAX`].
    pub(super) evicted: usize,
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

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::super::testing::{row, series_count, stored, temp_store};
    use super::*;

    #[test]
    fn huge_readings_from_one_device_block_no_batch_and_leave_models_finite() {
        let (_dir, path, store) = temp_store();
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
        let (_dir, path, store) = temp_store();
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
}
