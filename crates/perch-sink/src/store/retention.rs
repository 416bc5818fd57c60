//! Retention: deleting what was published before a cutoff, a slice at a time so the sink's
//! writes are never held up for long.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::TelemetryStore;
use super::rows::Purged;
use crate::Result;

/// Rows one retention delete removes before letting the sink write again.
const PURGE_SLICE: usize = 5_000;

impl TelemetryStore {
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
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::super::testing::{row, series_count, temp_store};
    use super::super::{QUERY_LIMIT_MAX, Query, Row};
    use super::*;

    #[test]
    fn retention_deletes_only_what_is_older_than_the_cutoff() {
        let (_dir, _path, store) = temp_store();
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
    fn retention_deletes_series_no_message_updated_since_the_cutoff() {
        let (_dir, path, store) = temp_store();
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
}
