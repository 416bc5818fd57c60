//! Reading the store back: the newest points or anomalies of a range, oldest first, on the
//! reader connection (in WAL mode it never waits for the sink's writes).

use chrono::{DateTime, TimeZone, Utc};

use super::rows::{Anomaly, Point, Query};
use super::{QUERY_LIMIT_MAX, TelemetryStore};
use crate::Result;

impl TelemetryStore {
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

#[cfg(test)]
mod tests {
    use super::super::testing::{row, temp_store};
    use super::*;

    #[test]
    fn batches_are_idempotent_and_queries_filter_and_keep_time_order() {
        let (_dir, path, store) = temp_store();
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
