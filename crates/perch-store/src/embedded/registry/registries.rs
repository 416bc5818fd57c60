//! Registry records: create, read, page through a location's, update, delete (refused while the
//! registry still has devices).

use perch_core::model::Registry;
use perch_core::{LocationName, RegistryName, Rejection};
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use super::backend;
use super::tables::{
    DEVICES, REGISTRIES, decode, devices_prefix, encode, page_start, prefix_end, registry_key,
    registry_not_found,
};
use crate::Result;
use crate::registry::RegistryUpdate;

pub(super) fn create(txn: &WriteTransaction, registry: Registry) -> Result<Registry> {
    let key = registry_key(&registry.name());
    let mut table = txn.open_table(REGISTRIES).map_err(backend)?;
    if table.get(key.as_str()).map_err(backend)?.is_some() {
        return Err(Rejection::already_exists(&registry.id).into());
    }
    table
        .insert(key.as_str(), encode(&registry)?.as_slice())
        .map_err(backend)?;
    Ok(registry)
}

pub(super) fn get(db: &Database, name: &RegistryName) -> Result<Registry> {
    let txn = db.begin_read().map_err(backend)?;
    let table = txn.open_table(REGISTRIES).map_err(backend)?;
    match table.get(registry_key(name).as_str()).map_err(backend)? {
        Some(bytes) => decode(bytes.value()),
        None => Err(registry_not_found(name)),
    }
}

/// A location's registries in id order, starting after `after`.
pub(super) fn list(
    db: &Database,
    location: &LocationName,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Registry>> {
    let prefix = format!("{location}/registries/");
    let txn = db.begin_read().map_err(backend)?;
    let table = txn.open_table(REGISTRIES).map_err(backend)?;
    let end = prefix_end(&prefix);
    let start = page_start(&prefix, after);
    let mut out = Vec::new();
    for entry in table.range(start.as_str()..end.as_str()).map_err(backend)? {
        let (_, v) = entry.map_err(backend)?;
        out.push(decode(v.value())?);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

pub(super) fn update(
    txn: &WriteTransaction,
    name: &RegistryName,
    update: RegistryUpdate,
) -> Result<Registry> {
    let key = registry_key(name);
    let mut table = txn.open_table(REGISTRIES).map_err(backend)?;
    let mut registry: Registry = match table.get(key.as_str()).map_err(backend)? {
        Some(bytes) => decode(bytes.value())?,
        None => return Err(registry_not_found(name)),
    };
    update(&mut registry)?;
    table
        .insert(key.as_str(), encode(&registry)?.as_slice())
        .map_err(backend)?;
    Ok(registry)
}

/// Deletes a registry; `FAILED_PRECONDITION` while it still has devices.
pub(super) fn delete(txn: &WriteTransaction, name: &RegistryName) -> Result<()> {
    let mut table = txn.open_table(REGISTRIES).map_err(backend)?;
    if table
        .get(registry_key(name).as_str())
        .map_err(backend)?
        .is_none()
    {
        return Err(registry_not_found(name));
    }
    let devices = txn.open_table(DEVICES).map_err(backend)?;
    let prefix = devices_prefix(name);
    let end = prefix_end(&prefix);
    if devices
        .range(prefix.as_str()..end.as_str())
        .map_err(backend)?
        .next()
        .is_some()
    {
        return Err(Rejection::failed_precondition(format!(
            "registry `{name}` still has devices; delete them first"
        ))
        .into());
    }
    table.remove(registry_key(name).as_str()).map_err(backend)?;
    Ok(())
}
