//! Gateway bindings: each (gateway, device) pair of numeric ids is kept in both directions, so
//! either side's bindings are one range scan.

use perch_core::{DeviceRef, RegistryName, Rejection};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::backend;
use super::devices::read_device;
use super::tables::{DEVICE_GATEWAYS, DEVICE_NUM_IDS, DEVICES, GATEWAY_DEVICES, device_not_found};
use crate::Result;

/// Removes every pair that starts with `first`; the second halves it removed.
pub(super) fn remove_pairs(
    table: &mut redb::Table<(u64, u64), ()>,
    first: u64,
) -> Result<Vec<u64>> {
    let seconds = read_pairs(&*table, first)?;
    for second in &seconds {
        table.remove((first, *second)).map_err(backend)?;
    }
    Ok(seconds)
}

/// The second halves of the pairs that start with `first`.
pub(super) fn read_pairs(
    table: &impl ReadableTable<(u64, u64), ()>,
    first: u64,
) -> Result<Vec<u64>> {
    table
        .range((first, 0)..=(first, u64::MAX))
        .map_err(backend)?
        .map(|entry| entry.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()
        .map_err(backend)
}

/// Binds a device to a gateway of the same registry; `NOT_FOUND` if either is missing there.
pub(super) fn bind(
    txn: &WriteTransaction,
    registry: &RegistryName,
    gateway_num_id: u64,
    device_num_id: u64,
) -> Result<()> {
    let devices = txn.open_table(DEVICES).map_err(backend)?;
    let num_ids = txn.open_table(DEVICE_NUM_IDS).map_err(backend)?;
    for num_id in [gateway_num_id, device_num_id] {
        let device = DeviceRef::NumId(num_id);
        if read_device(&devices, &num_ids, registry, &device)?.is_none() {
            return Err(device_not_found(registry, &device));
        }
    }
    txn.open_table(GATEWAY_DEVICES)
        .map_err(backend)?
        .insert((gateway_num_id, device_num_id), ())
        .map_err(backend)?;
    txn.open_table(DEVICE_GATEWAYS)
        .map_err(backend)?
        .insert((device_num_id, gateway_num_id), ())
        .map_err(backend)?;
    Ok(())
}

/// Unbinds a device from a gateway; `NOT_FOUND` if it was not bound.
pub(super) fn unbind(
    txn: &WriteTransaction,
    registry: &RegistryName,
    gateway_num_id: u64,
    device_num_id: u64,
) -> Result<()> {
    let mut forward = txn.open_table(GATEWAY_DEVICES).map_err(backend)?;
    if forward
        .remove((gateway_num_id, device_num_id))
        .map_err(backend)?
        .is_none()
    {
        return Err(Rejection::not_found(format!(
            "device {device_num_id} is not bound to gateway {gateway_num_id} in `{registry}`"
        ))
        .into());
    }
    txn.open_table(DEVICE_GATEWAYS)
        .map_err(backend)?
        .remove((device_num_id, gateway_num_id))
        .map_err(backend)?;
    Ok(())
}

/// The bindings of one side: a gateway's devices (`GATEWAY_DEVICES`) or a device's gateways
/// (`DEVICE_GATEWAYS`).
pub(super) fn bound(
    db: &Database,
    table: TableDefinition<(u64, u64), ()>,
    num_id: u64,
) -> Result<Vec<u64>> {
    let txn = db.begin_read().map_err(backend)?;
    read_pairs(&txn.open_table(table).map_err(backend)?, num_id)
}
