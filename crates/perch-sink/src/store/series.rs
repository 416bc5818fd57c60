//! The anomaly models' state in table `series`: running a stored row's numeric fields through
//! their series (creating one, within [`SERIES_PER_DEVICE_MAX`] per device, evicting the least
//! recently updated), and recording what they flag in table `anomalies`.

use rusqlite::{Connection, params};

use super::SERIES_PER_DEVICE_MAX;
use super::rows::{Anomaly, Row};
use super::write::Judged;
use crate::Result;
use crate::model::{Series, modelled_fields};

/// Runs the anomaly models of a newly stored row's numeric fields, inside its transaction.
pub(super) fn judge(conn: &Connection, r: &Row) -> Result<Judged> {
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

#[cfg(test)]
mod tests {
    use super::super::testing::{row, series_count, stored, temp_store};
    use super::*;

    #[test]
    fn series_are_capped_per_message_and_per_device_keeping_the_newest() {
        let (_dir, path, store) = temp_store();
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
}
