//! Config and state history: each device's config versions and state reports, keyed by
//! (numId, version / unix nanos), trimmed to the newest few inside the transaction that adds
//! one, and read newest first.

use perch_core::limits::{CONFIG_VERSIONS_KEPT, STATES_KEPT};
use perch_core::model::Device;
use perch_core::{DeviceRef, RegistryName};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;

use super::backend;
use super::devices::read_device;
use super::tables::{
    CONFIG_VERSIONS, DEVICE_NUM_IDS, DEVICES, STATES, device_not_found, encode, timestamp_key,
};
use crate::Result;

/// A history table: `CONFIG_VERSIONS` or `STATES`.
pub(super) type HistoryTable = TableDefinition<'static, (u64, i64), &'static [u8]>;

/// Appends `value` under `(num_id, seq)` and keeps only the newest `keep` entries of `num_id`.
fn append(
    table: &mut redb::Table<(u64, i64), &[u8]>,
    num_id: u64,
    seq: i64,
    value: &[u8],
    keep: usize,
) -> Result<()> {
    table.insert((num_id, seq), value).map_err(backend)?;
    let keys: Vec<i64> = table
        .range((num_id, i64::MIN)..=(num_id, i64::MAX))
        .map_err(backend)?
        .map(|entry| entry.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    if keys.len() > keep {
        for old in &keys[..keys.len() - keep] {
            table.remove((num_id, *old)).map_err(backend)?;
        }
    }
    Ok(())
}

/// Records what an update changed in `current`'s config and state history, given its config
/// version and state time before the update.
pub(super) fn record_changes(
    txn: &WriteTransaction,
    current: &Device,
    before_version: i64,
    before_state: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<()> {
    if current.config.version != before_version {
        let mut configs = txn.open_table(CONFIG_VERSIONS).map_err(backend)?;
        append(
            &mut configs,
            current.num_id,
            current.config.version,
            &encode(&current.config)?,
            CONFIG_VERSIONS_KEPT,
        )?;
    } else if current.config.device_ack_time.is_some() {
        // An ack changes the newest version in place: keep its history entry in step.
        let mut configs = txn.open_table(CONFIG_VERSIONS).map_err(backend)?;
        configs
            .insert(
                (current.num_id, current.config.version),
                encode(&current.config)?.as_slice(),
            )
            .map_err(backend)?;
    }
    if let Some(state) = &current.state
        && Some(state.update_time) != before_state
    {
        let mut states = txn.open_table(STATES).map_err(backend)?;
        append(
            &mut states,
            current.num_id,
            timestamp_key(state.update_time),
            &encode(state)?,
            STATES_KEPT,
        )?;
    }
    Ok(())
}

/// Deletes a device's whole history.
pub(super) fn delete(txn: &WriteTransaction, num_id: u64) -> Result<()> {
    for table in [CONFIG_VERSIONS, STATES] {
        txn.open_table(table)
            .map_err(backend)?
            .retain_in((num_id, i64::MIN)..=(num_id, i64::MAX), |_, _| false)
            .map_err(backend)?;
    }
    Ok(())
}

/// The newest `limit` (0: all) entries of a device's history in `table`, newest first.
pub(super) fn list<T: DeserializeOwned>(
    db: &Database,
    table: HistoryTable,
    registry: &RegistryName,
    device: &DeviceRef,
    limit: usize,
) -> Result<Vec<T>> {
    let txn = db.begin_read().map_err(backend)?;
    let devices = txn.open_table(DEVICES).map_err(backend)?;
    let num_ids = txn.open_table(DEVICE_NUM_IDS).map_err(backend)?;
    let Some((_, current)) = read_device(&devices, &num_ids, registry, device)? else {
        return Err(device_not_found(registry, device));
    };
    let table = txn.open_table(table).map_err(backend)?;
    let mut out = Vec::new();
    for entry in table
        .range((current.num_id, i64::MIN)..=(current.num_id, i64::MAX))
        .map_err(backend)?
        .rev()
    {
        let (_, v) = entry.map_err(backend)?;
        out.push(super::tables::decode(v.value())?);
        if limit != 0 && out.len() >= limit {
            break;
        }
    }
    Ok(out)
}
