//! Device records: creating them (numeric ids assigned here, unique across all registries),
//! resolving a string or numeric id, reading, paging, updating through a closure inside the
//! transaction, and deleting (refused while a gateway still has bound devices).

use perch_core::limits::{NUM_ID_MAX, NUM_ID_MIN};
use perch_core::model::Device;
use perch_core::{DeviceId, DeviceRef, RegistryName, Rejection};
use rand::Rng;
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use super::backend;
use super::gateways::{read_pairs, remove_pairs};
use super::history;
use super::tables::{
    CONFIG_VERSIONS, DEVICE_GATEWAYS, DEVICE_NUM_IDS, DEVICES, GATEWAY_DEVICES, REGISTRIES, decode,
    device_key, device_not_found, devices_prefix, encode, page_start, prefix_end, registry_key,
    registry_not_found,
};
use crate::Result;
use crate::registry::{DeviceFilter, DeviceUpdate};

/// Resolves a device reference to its key inside a transaction's tables.
fn resolve_device_key<T>(
    num_ids: &T,
    registry: &RegistryName,
    device: &DeviceRef,
) -> Result<Option<String>>
where
    T: ReadableTable<u64, &'static str>,
{
    match device {
        DeviceRef::Id(id) => Ok(Some(device_key(registry, id))),
        DeviceRef::NumId(n) => {
            let Some(key) = num_ids.get(*n).map_err(backend)? else {
                return Ok(None);
            };
            let key = key.value().to_owned();
            // A numeric id names a device only within its own registry.
            if key.starts_with(&devices_prefix(registry)) {
                Ok(Some(key))
            } else {
                Ok(None)
            }
        }
    }
}

/// Reads and decodes the device a reference names, if it exists.
pub(super) fn read_device<D, N>(
    devices: &D,
    num_ids: &N,
    registry: &RegistryName,
    device: &DeviceRef,
) -> Result<Option<(String, Device)>>
where
    D: ReadableTable<&'static str, &'static [u8]>,
    N: ReadableTable<u64, &'static str>,
{
    let Some(key) = resolve_device_key(num_ids, registry, device)? else {
        return Ok(None);
    };
    let Some(bytes) = devices.get(key.as_str()).map_err(backend)? else {
        return Ok(None);
    };
    let device = decode(bytes.value())?;
    Ok(Some((key, device)))
}

/// Inserts new devices, assigning numeric ids; `ALREADY_EXISTS` if any id is taken.
pub(super) fn insert(
    txn: &WriteTransaction,
    registry: &RegistryName,
    devices: Vec<Device>,
) -> Result<Vec<Device>> {
    let registries = txn.open_table(REGISTRIES).map_err(backend)?;
    if registries
        .get(registry_key(registry).as_str())
        .map_err(backend)?
        .is_none()
    {
        return Err(registry_not_found(registry));
    }
    let mut table = txn.open_table(DEVICES).map_err(backend)?;
    let mut num_ids = txn.open_table(DEVICE_NUM_IDS).map_err(backend)?;
    let mut configs = txn.open_table(CONFIG_VERSIONS).map_err(backend)?;
    let mut rng = rand::rng();
    let mut created = Vec::with_capacity(devices.len());
    for mut device in devices {
        let key = device_key(registry, &device.id);
        if table.get(key.as_str()).map_err(backend)?.is_some() {
            return Err(Rejection::already_exists(&device.id).into());
        }
        device.num_id = loop {
            let candidate = rng.random_range(NUM_ID_MIN..=NUM_ID_MAX);
            if num_ids.get(candidate).map_err(backend)?.is_none() {
                break candidate;
            }
        };
        table
            .insert(key.as_str(), encode(&device)?.as_slice())
            .map_err(backend)?;
        num_ids
            .insert(device.num_id, key.as_str())
            .map_err(backend)?;
        configs
            .insert(
                (device.num_id, device.config.version),
                encode(&device.config)?.as_slice(),
            )
            .map_err(backend)?;
        created.push(device);
    }
    Ok(created)
}

pub(super) fn get(db: &Database, registry: &RegistryName, device: &DeviceRef) -> Result<Device> {
    let txn = db.begin_read().map_err(backend)?;
    let devices = txn.open_table(DEVICES).map_err(backend)?;
    let num_ids = txn.open_table(DEVICE_NUM_IDS).map_err(backend)?;
    match read_device(&devices, &num_ids, registry, device)? {
        Some((_, d)) => Ok(d),
        None => Err(device_not_found(registry, device)),
    }
}

/// A registry's devices in id order, starting after `after`, that pass `filter`.
pub(super) fn list(
    db: &Database,
    registry: &RegistryName,
    after: Option<&DeviceId>,
    limit: usize,
    filter: &DeviceFilter,
) -> Result<Vec<Device>> {
    let txn = db.begin_read().map_err(backend)?;
    let devices = txn.open_table(DEVICES).map_err(backend)?;
    let prefix = devices_prefix(registry);
    let end = prefix_end(&prefix);
    let start = page_start(&prefix, after.map(|a| a.as_str()));
    let mut out = Vec::new();
    for entry in devices
        .range(start.as_str()..end.as_str())
        .map_err(backend)?
    {
        let (_, v) = entry.map_err(backend)?;
        let device: Device = decode(v.value())?;
        if filter(&device) {
            out.push(device);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// Reads a device, applies `update` and writes it back with any new config or state history
/// entry, inside `txn`. Fails before writing anything when the device is missing or `update`
/// refuses.
pub(super) fn update(
    txn: &WriteTransaction,
    registry: &RegistryName,
    device: &DeviceRef,
    update: DeviceUpdate,
) -> Result<Device> {
    let mut devices = txn.open_table(DEVICES).map_err(backend)?;
    let num_ids = txn.open_table(DEVICE_NUM_IDS).map_err(backend)?;
    let Some((key, mut current)) = read_device(&devices, &num_ids, registry, device)? else {
        return Err(device_not_found(registry, device));
    };
    let before_version = current.config.version;
    let before_state = current.state.as_ref().map(|s| s.update_time);
    update(&mut current)?;
    history::record_changes(txn, &current, before_version, before_state)?;
    devices
        .insert(key.as_str(), encode(&current)?.as_slice())
        .map_err(backend)?;
    Ok(current)
}

/// Deletes a device with its history and gateway bindings; `FAILED_PRECONDITION` for a gateway
/// that still has bound devices.
pub(super) fn delete(
    txn: &WriteTransaction,
    registry: &RegistryName,
    device: &DeviceRef,
) -> Result<Device> {
    let mut devices = txn.open_table(DEVICES).map_err(backend)?;
    let mut num_ids = txn.open_table(DEVICE_NUM_IDS).map_err(backend)?;
    let Some((key, current)) = read_device(&devices, &num_ids, registry, device)? else {
        return Err(device_not_found(registry, device));
    };
    let mut gateway_devices = txn.open_table(GATEWAY_DEVICES).map_err(backend)?;
    if !read_pairs(&gateway_devices, current.num_id)?.is_empty() {
        return Err(Rejection::failed_precondition(format!(
            "gateway `{}` still has bound devices; unbind them first",
            current.id
        ))
        .into());
    }
    let mut device_gateways = txn.open_table(DEVICE_GATEWAYS).map_err(backend)?;
    for gateway in remove_pairs(&mut device_gateways, current.num_id)? {
        gateway_devices
            .remove((gateway, current.num_id))
            .map_err(backend)?;
    }
    devices.remove(key.as_str()).map_err(backend)?;
    num_ids.remove(current.num_id).map_err(backend)?;
    history::delete(txn, current.num_id)?;
    Ok(current)
}
