//! `RegistryStore` on redb: one file, ACID transactions, every commit fsynced before it returns.
//!
//! Tables (keys are resource names, so a location's registries and a registry's devices are
//! contiguous ranges in id order):
//! - `registries`: `projects/P/locations/L/registries/R` → Registry (MessagePack)
//! - `devices`: `…/registries/R/devices/D` → Device (MessagePack)
//! - `device_num_ids`: numId → device key
//! - `config_versions`: (numId, version) → DeviceConfig; `states`: (numId, unix nanos) → DeviceState
//! - `gateway_devices`: (gateway numId, device numId); `device_gateways`: the reverse
//!
//! Blocking work runs on tokio's blocking pool, never on a runtime thread.

use std::path::Path;

use perch_core::limits::{CONFIG_VERSIONS_KEPT, NUM_ID_MAX, NUM_ID_MIN, STATES_KEPT};
use perch_core::model::{Device, DeviceConfig, DeviceState, Registry};
use perch_core::{DeviceId, DeviceRef, LocationName, RegistryName, Rejection};
use rand::Rng;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::commit::Committer;
use super::records;
use crate::registry::{
    DeviceFilter, DeviceRecordUpdate, DeviceUpdate, RecordKind, RecordUpdate, RegistryStore,
    RegistryUpdate,
};
use crate::{Error, Result};

const REGISTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("registries");
const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
const DEVICE_NUM_IDS: TableDefinition<u64, &str> = TableDefinition::new("device_num_ids");
const CONFIG_VERSIONS: TableDefinition<(u64, i64), &[u8]> = TableDefinition::new("config_versions");
const STATES: TableDefinition<(u64, i64), &[u8]> = TableDefinition::new("states");
const GATEWAY_DEVICES: TableDefinition<(u64, u64), ()> = TableDefinition::new("gateway_devices");
const DEVICE_GATEWAYS: TableDefinition<(u64, u64), ()> = TableDefinition::new("device_gateways");
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// The registry in a redb file.
#[derive(Debug, Clone)]
pub struct EmbeddedRegistryStore {
    committer: Committer,
}

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(value).map_err(backend)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(backend)
}

fn registry_key(name: &RegistryName) -> String {
    name.to_string()
}

fn devices_prefix(registry: &RegistryName) -> String {
    format!("{registry}/devices/")
}

fn device_key(registry: &RegistryName, id: &DeviceId) -> String {
    format!("{registry}/devices/{id}")
}

/// The exclusive upper bound of the keys that start with `prefix` (which ends in `/`).
fn prefix_end(prefix: &str) -> String {
    debug_assert!(prefix.ends_with('/'));
    format!("{}0", &prefix[..prefix.len() - 1])
}

fn registry_not_found(name: &RegistryName) -> Error {
    Rejection::not_found(format!(
        "The registry with the name '{name}' doesn't exist."
    ))
    .into()
}

fn device_not_found(registry: &RegistryName, device: &DeviceRef) -> Error {
    Rejection::not_found(format!(
        "A device with the name '{registry}/devices/{device}' doesn't exist."
    ))
    .into()
}

fn timestamp_key(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

impl EmbeddedRegistryStore {
    /// Opens (or creates) the registry file.
    pub fn open(path: &Path) -> Result<EmbeddedRegistryStore> {
        let db = super::open_database(path).map_err(backend)?;
        // Create every table up front so that read transactions never meet a missing one.
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(REGISTRIES).map_err(backend)?;
            txn.open_table(DEVICES).map_err(backend)?;
            txn.open_table(DEVICE_NUM_IDS).map_err(backend)?;
            txn.open_table(CONFIG_VERSIONS).map_err(backend)?;
            txn.open_table(STATES).map_err(backend)?;
            txn.open_table(GATEWAY_DEVICES).map_err(backend)?;
            txn.open_table(DEVICE_GATEWAYS).map_err(backend)?;
            txn.open_table(RECORDS).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        let committer =
            Committer::start(db, path.to_owned(), "perch-registry-commit").map_err(backend)?;
        Ok(EmbeddedRegistryStore { committer })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.committer.database()?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(backend)?
    }

    /// Runs a point read on the calling task. It touches a handful of B-tree pages, nearly always
    /// in redb's page cache, so it takes microseconds: less than the two thread hand-offs of
    /// `spawn_blocking` would cost. Scans (lists) still go to the blocking pool.
    async fn lookup<T>(&self, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        f(&*self.committer.database()?)
    }

    /// Runs a write transaction on the writer thread; resolves once it is durable.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.committer.write(f).await
    }
}

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
fn read_device<D, N>(
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

/// Appends `value` under `(num_id, seq)` and keeps only the newest `keep` entries of `num_id`.
fn append_history(
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

fn read_history<T: DeserializeOwned>(
    table: &impl ReadableTable<(u64, i64), &'static [u8]>,
    num_id: u64,
    limit: usize,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for entry in table
        .range((num_id, i64::MIN)..=(num_id, i64::MAX))
        .map_err(backend)?
        .rev()
    {
        let (_, v) = entry.map_err(backend)?;
        out.push(decode(v.value())?);
        if limit != 0 && out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

fn remove_pairs(table: &mut redb::Table<(u64, u64), ()>, first: u64) -> Result<Vec<u64>> {
    let seconds: Vec<u64> = table
        .range((first, 0)..=(first, u64::MAX))
        .map_err(backend)?
        .map(|entry| entry.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    for second in &seconds {
        table.remove((first, *second)).map_err(backend)?;
    }
    Ok(seconds)
}

fn read_pairs(table: &impl ReadableTable<(u64, u64), ()>, first: u64) -> Result<Vec<u64>> {
    table
        .range((first, 0)..=(first, u64::MAX))
        .map_err(backend)?
        .map(|entry| entry.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()
        .map_err(backend)
}

/// Inserts new devices, assigning numeric ids; `ALREADY_EXISTS` if any id is taken.
fn insert_devices(
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

/// Reads one record, lets `update` decide its new bytes, and writes them (None deletes).
fn update_record_in(
    txn: &WriteTransaction,
    key: &str,
    update: impl FnOnce(Option<Vec<u8>>) -> Result<Option<Vec<u8>>, Rejection>,
) -> Result<Option<Vec<u8>>> {
    let mut t = txn.open_table(RECORDS).map_err(backend)?;
    let current = t.get(key).map_err(backend)?.map(|v| v.value().to_vec());
    let next = update(current)?;
    match &next {
        Some(bytes) => {
            t.insert(key, bytes.as_slice()).map_err(backend)?;
        }
        None => {
            t.remove(key).map_err(backend)?;
        }
    }
    Ok(next)
}

/// Reads a device, applies `update` and writes it back with any new config or state history
/// entry, inside `txn`. Fails before writing anything when the device is missing or `update`
/// refuses.
fn update_device_in(
    txn: &WriteTransaction,
    registry: &RegistryName,
    device: &DeviceRef,
    update: DeviceUpdate,
) -> Result<Device> {
    let updated = {
        let mut devices = txn.open_table(DEVICES).map_err(backend)?;
        let num_ids = txn.open_table(DEVICE_NUM_IDS).map_err(backend)?;
        let Some((key, mut current)) = read_device(&devices, &num_ids, registry, device)? else {
            return Err(device_not_found(registry, device));
        };
        let before_version = current.config.version;
        let before_state = current.state.as_ref().map(|s| s.update_time);
        update(&mut current)?;
        if current.config.version != before_version {
            let mut configs = txn.open_table(CONFIG_VERSIONS).map_err(backend)?;
            append_history(
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
            append_history(
                &mut states,
                current.num_id,
                timestamp_key(state.update_time),
                &encode(state)?,
                STATES_KEPT,
            )?;
        }
        devices
            .insert(key.as_str(), encode(&current)?.as_slice())
            .map_err(backend)?;
        current
    };
    Ok(updated)
}

#[async_trait::async_trait]
impl RegistryStore for EmbeddedRegistryStore {
    async fn create_registry(&self, registry: Registry) -> Result<Registry> {
        self.write(move |txn| {
            let key = registry_key(&registry.name());
            {
                let mut table = txn.open_table(REGISTRIES).map_err(backend)?;
                if table.get(key.as_str()).map_err(backend)?.is_some() {
                    return Err(Rejection::already_exists(&registry.id).into());
                }
                table
                    .insert(key.as_str(), encode(&registry)?.as_slice())
                    .map_err(backend)?;
            }
            Ok(registry)
        })
        .await
    }

    async fn get_registry(&self, name: &RegistryName) -> Result<Registry> {
        let name = name.clone();
        self.lookup(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(REGISTRIES).map_err(backend)?;
            match table.get(registry_key(&name).as_str()).map_err(backend)? {
                Some(bytes) => decode(bytes.value()),
                None => Err(registry_not_found(&name)),
            }
        })
        .await
    }

    async fn list_registries(
        &self,
        location: &LocationName,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Registry>> {
        let prefix = format!("{location}/registries/");
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(REGISTRIES).map_err(backend)?;
            let end = prefix_end(&prefix);
            let start = match &after {
                // The smallest key strictly after `prefix + after`.
                Some(after) => format!("{prefix}{after}\0"),
                None => prefix.clone(),
            };
            let mut out = Vec::new();
            for entry in table.range(start.as_str()..end.as_str()).map_err(backend)? {
                let (_, v) = entry.map_err(backend)?;
                out.push(decode(v.value())?);
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn update_registry(
        &self,
        name: &RegistryName,
        update: RegistryUpdate,
    ) -> Result<Registry> {
        let name = name.clone();
        self.write(move |txn| {
            let key = registry_key(&name);
            let registry = {
                let mut table = txn.open_table(REGISTRIES).map_err(backend)?;
                let mut registry: Registry = match table.get(key.as_str()).map_err(backend)? {
                    Some(bytes) => decode(bytes.value())?,
                    None => return Err(registry_not_found(&name)),
                };
                update(&mut registry)?;
                table
                    .insert(key.as_str(), encode(&registry)?.as_slice())
                    .map_err(backend)?;
                registry
            };
            Ok(registry)
        })
        .await
    }

    async fn delete_registry(&self, name: &RegistryName) -> Result<()> {
        let name = name.clone();
        self.write(move |txn| {
            {
                let mut table = txn.open_table(REGISTRIES).map_err(backend)?;
                if table
                    .get(registry_key(&name).as_str())
                    .map_err(backend)?
                    .is_none()
                {
                    return Err(registry_not_found(&name));
                }
                let devices = txn.open_table(DEVICES).map_err(backend)?;
                let prefix = devices_prefix(&name);
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
                table
                    .remove(registry_key(&name).as_str())
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn create_devices(
        &self,
        registry: &RegistryName,
        devices: Vec<Device>,
    ) -> Result<Vec<Device>> {
        let registry = registry.clone();
        self.write(move |txn| insert_devices(txn, &registry, devices))
            .await
    }

    async fn create_device_with_records(
        &self,
        registry: &RegistryName,
        device: Device,
        updates: Vec<(RecordKind, String, DeviceRecordUpdate)>,
    ) -> Result<Device> {
        let registry = registry.clone();
        self.write(move |txn| {
            let device = insert_devices(txn, &registry, vec![device])?
                .pop()
                .ok_or_else(|| backend("no device was inserted"))?;
            for (kind, key, update) in updates {
                update_record_in(txn, &record_key(kind, &key), |current| {
                    update(&device, current)
                })?;
            }
            Ok(device)
        })
        .await
    }

    async fn get_device(&self, registry: &RegistryName, device: &DeviceRef) -> Result<Device> {
        let (registry, device) = (registry.clone(), device.clone());
        self.lookup(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let devices = txn.open_table(DEVICES).map_err(backend)?;
            let num_ids = txn.open_table(DEVICE_NUM_IDS).map_err(backend)?;
            match read_device(&devices, &num_ids, &registry, &device)? {
                Some((_, d)) => Ok(d),
                None => Err(device_not_found(&registry, &device)),
            }
        })
        .await
    }

    async fn list_devices(
        &self,
        registry: &RegistryName,
        after: Option<DeviceId>,
        limit: usize,
        filter: DeviceFilter,
    ) -> Result<Vec<Device>> {
        let registry = registry.clone();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let devices = txn.open_table(DEVICES).map_err(backend)?;
            let prefix = devices_prefix(&registry);
            let end = prefix_end(&prefix);
            let start = match &after {
                Some(after) => format!("{prefix}{after}\0"),
                None => prefix.clone(),
            };
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
        })
        .await
    }

    async fn update_device(
        &self,
        registry: &RegistryName,
        device: &DeviceRef,
        update: DeviceUpdate,
    ) -> Result<Device> {
        let (registry, device) = (registry.clone(), device.clone());
        self.write(move |txn| update_device_in(txn, &registry, &device, update))
            .await
    }

    async fn update_devices(
        &self,
        updates: Vec<(RegistryName, DeviceRef, DeviceUpdate)>,
    ) -> Result<Vec<Result<Device>>> {
        self.write(move |txn| {
            updates
                .into_iter()
                .map(|(registry, device, update)| {
                    match update_device_in(txn, &registry, &device, update) {
                        // A backend failure leaves the transaction unusable: abort all of it.
                        Err(Error::Backend(e)) => Err(Error::Backend(e)),
                        other => Ok(other),
                    }
                })
                .collect()
        })
        .await
    }

    async fn delete_device(&self, registry: &RegistryName, device: &DeviceRef) -> Result<Device> {
        let (registry, device) = (registry.clone(), device.clone());
        self.write(move |txn| {
            let deleted = {
                let mut devices = txn.open_table(DEVICES).map_err(backend)?;
                let mut num_ids = txn.open_table(DEVICE_NUM_IDS).map_err(backend)?;
                let Some((key, current)) = read_device(&devices, &num_ids, &registry, &device)?
                else {
                    return Err(device_not_found(&registry, &device));
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
                let mut configs = txn.open_table(CONFIG_VERSIONS).map_err(backend)?;
                configs
                    .retain_in(
                        (current.num_id, i64::MIN)..=(current.num_id, i64::MAX),
                        |_, _| false,
                    )
                    .map_err(backend)?;
                let mut states = txn.open_table(STATES).map_err(backend)?;
                states
                    .retain_in(
                        (current.num_id, i64::MIN)..=(current.num_id, i64::MAX),
                        |_, _| false,
                    )
                    .map_err(backend)?;
                current
            };
            Ok(deleted)
        })
        .await
    }

    async fn list_config_versions(
        &self,
        registry: &RegistryName,
        device: &DeviceRef,
        limit: usize,
    ) -> Result<Vec<DeviceConfig>> {
        let (registry, device) = (registry.clone(), device.clone());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let devices = txn.open_table(DEVICES).map_err(backend)?;
            let num_ids = txn.open_table(DEVICE_NUM_IDS).map_err(backend)?;
            let Some((_, current)) = read_device(&devices, &num_ids, &registry, &device)? else {
                return Err(device_not_found(&registry, &device));
            };
            let configs = txn.open_table(CONFIG_VERSIONS).map_err(backend)?;
            read_history(&configs, current.num_id, limit)
        })
        .await
    }

    async fn list_states(
        &self,
        registry: &RegistryName,
        device: &DeviceRef,
        limit: usize,
    ) -> Result<Vec<DeviceState>> {
        let (registry, device) = (registry.clone(), device.clone());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let devices = txn.open_table(DEVICES).map_err(backend)?;
            let num_ids = txn.open_table(DEVICE_NUM_IDS).map_err(backend)?;
            let Some((_, current)) = read_device(&devices, &num_ids, &registry, &device)? else {
                return Err(device_not_found(&registry, &device));
            };
            let states = txn.open_table(STATES).map_err(backend)?;
            read_history(&states, current.num_id, limit)
        })
        .await
    }

    async fn bind_device_to_gateway(
        &self,
        registry: &RegistryName,
        gateway_num_id: u64,
        device_num_id: u64,
    ) -> Result<()> {
        let registry = registry.clone();
        self.write(move |txn| {
            {
                let devices = txn.open_table(DEVICES).map_err(backend)?;
                let num_ids = txn.open_table(DEVICE_NUM_IDS).map_err(backend)?;
                for num_id in [gateway_num_id, device_num_id] {
                    let device = DeviceRef::NumId(num_id);
                    if read_device(&devices, &num_ids, &registry, &device)?.is_none() {
                        return Err(device_not_found(&registry, &device));
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
            }
            Ok(())
        })
        .await
    }

    async fn unbind_device_from_gateway(
        &self,
        registry: &RegistryName,
        gateway_num_id: u64,
        device_num_id: u64,
    ) -> Result<()> {
        let registry = registry.clone();
        self.write(move |txn| {
            {
                let mut forward = txn.open_table(GATEWAY_DEVICES).map_err(backend)?;
                if forward.remove((gateway_num_id, device_num_id)).map_err(backend)?.is_none() {
                    return Err(Rejection::not_found(format!(
                        "device {device_num_id} is not bound to gateway {gateway_num_id} in `{registry}`"
                    ))
                    .into());
                }
                txn.open_table(DEVICE_GATEWAYS)
                    .map_err(backend)?
                    .remove((device_num_id, gateway_num_id))
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn devices_bound_to_gateway(&self, gateway_num_id: u64) -> Result<Vec<u64>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            read_pairs(
                &txn.open_table(GATEWAY_DEVICES).map_err(backend)?,
                gateway_num_id,
            )
        })
        .await
    }

    async fn gateways_bound_to_device(&self, device_num_id: u64) -> Result<Vec<u64>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            read_pairs(
                &txn.open_table(DEVICE_GATEWAYS).map_err(backend)?,
                device_num_id,
            )
        })
        .await
    }

    async fn put_record(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        create_only: bool,
    ) -> Result<()> {
        let (k, id) = (
            record_key(kind, key),
            key.rsplit('/').next().unwrap_or(key).to_owned(),
        );
        self.write(move |txn| records::put(txn, RECORDS, &k, &value, create_only, &id))
            .await
    }

    async fn get_records(&self, keys: Vec<(RecordKind, String)>) -> Result<Vec<Option<Vec<u8>>>> {
        self.lookup(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let t = txn.open_table(RECORDS).map_err(backend)?;
            keys.iter()
                .map(|(kind, key)| {
                    Ok(t.get(record_key(*kind, key).as_str())
                        .map_err(backend)?
                        .map(|v| v.value().to_vec()))
                })
                .collect()
        })
        .await
    }

    async fn list_records(
        &self,
        kind: RecordKind,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let head = record_key(kind, "");
        let start = record_key(kind, prefix);
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let t = txn.open_table(RECORDS).map_err(backend)?;
            let mut out = Vec::new();
            for entry in t.range(start.as_str()..).map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                if !k.value().starts_with(start.as_str()) || out.len() >= limit {
                    break;
                }
                out.push((k.value()[head.len()..].to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    async fn list_records_rev(
        &self,
        kind: RecordKind,
        prefix: &str,
        before: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let head = record_key(kind, "");
        let start = record_key(kind, prefix);
        let end = match before {
            Some(b) => record_key(kind, &b),
            None => format!("{start}{}", char::MAX),
        };
        if end <= start {
            return Ok(Vec::new());
        }
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let t = txn.open_table(RECORDS).map_err(backend)?;
            let mut out = Vec::new();
            for entry in t
                .range(start.as_str()..end.as_str())
                .map_err(backend)?
                .rev()
            {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = entry.map_err(backend)?;
                out.push((k.value()[head.len()..].to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        let k = record_key(kind, key);
        self.write(move |txn| records::delete(txn, RECORDS, &k))
            .await
    }

    async fn update_records(
        &self,
        updates: Vec<(RecordKind, String, RecordUpdate)>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        self.write(move |txn| {
            updates
                .into_iter()
                .map(|(kind, key, update)| update_record_in(txn, &record_key(kind, &key), update))
                .collect()
        })
        .await
    }
}

fn record_key(kind: RecordKind, key: &str) -> String {
    format!("{}\0{key}", kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use perch_core::ErrorCode;
    use perch_core::model::Registry;

    fn registry() -> Registry {
        Registry {
            project: "p".into(),
            location: "us-central1".into(),
            id: "reg".parse().unwrap(),
            event_notification_configs: Vec::new(),
            state_notification_topic: String::new(),
            mqtt_state: Default::default(),
            http_state: Default::default(),
            log_level: Default::default(),
            credentials: Vec::new(),
        }
    }

    fn id(s: &str) -> DeviceRef {
        DeviceRef::Id(s.parse().unwrap())
    }

    #[tokio::test]
    async fn a_device_and_its_records_commit_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedRegistryStore::open(&dir.path().join("r.redb")).unwrap();
        let reg = store.create_registry(registry()).await.unwrap().name();

        let refused: DeviceRecordUpdate =
            Box::new(|_, _| Err(Rejection::failed_precondition("quota spent")));
        let err = store
            .create_device_with_records(
                &reg,
                Device::new("dev-a".parse().unwrap(), 0),
                vec![(RecordKind::Bootstrap, "quota".into(), refused)],
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("quota spent"), "{err}");
        assert!(
            store.get_device(&reg, &id("dev-a")).await.is_err(),
            "no device without its record"
        );

        let note: DeviceRecordUpdate =
            Box::new(|d, _| Ok(Some(format!("num {}", d.num_id).into_bytes())));
        let made = store
            .create_device_with_records(
                &reg,
                Device::new("dev-a".parse().unwrap(), 0),
                vec![(RecordKind::Decision, "d1".into(), note)],
            )
            .await
            .unwrap();
        let got = store
            .get_records(vec![
                (RecordKind::Decision, "d1".into()),
                (RecordKind::Decision, "missing".into()),
            ])
            .await
            .unwrap();
        assert_eq!(
            got[0].as_deref(),
            Some(format!("num {}", made.num_id).as_bytes())
        );
        assert_eq!(got[1], None);
    }

    #[tokio::test]
    async fn update_devices_applies_each_update_alone_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedRegistryStore::open(&dir.path().join("r.redb")).unwrap();
        let reg = store.create_registry(registry()).await.unwrap().name();
        store
            .create_devices(
                &reg,
                vec![
                    Device::new("dev-a".parse().unwrap(), 0),
                    Device::new("dev-b".parse().unwrap(), 0),
                ],
            )
            .await
            .unwrap();
        let block: fn() -> DeviceUpdate = || {
            Box::new(|d: &mut Device| {
                d.blocked = true;
                Ok(())
            })
        };
        let results = store
            .update_devices(vec![
                (reg.clone(), id("dev-a"), block()),
                (reg.clone(), id("dev-gone"), block()),
                (
                    reg.clone(),
                    id("dev-b"),
                    Box::new(|_: &mut Device| Err(Rejection::invalid_argument("no"))),
                ),
            ])
            .await
            .unwrap();
        assert!(results[0].as_ref().unwrap().blocked);
        assert_eq!(results[1].as_ref().unwrap_err().code(), ErrorCode::NotFound);
        assert!(results[2].is_err());
        assert!(store.get_device(&reg, &id("dev-a")).await.unwrap().blocked);
        assert!(!store.get_device(&reg, &id("dev-b")).await.unwrap().blocked);
    }

    #[tokio::test]
    async fn list_records_rev_pages_newest_first_within_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedRegistryStore::open(&dir.path().join("r.redb")).unwrap();
        for key in ["a/1", "a/2", "a/3", "b/1"] {
            store
                .put_record(RecordKind::Decision, key, key.as_bytes().to_vec(), false)
                .await
                .unwrap();
        }
        let keys = |page: Vec<(String, Vec<u8>)>| -> Vec<String> {
            page.into_iter().map(|(k, _)| k).collect()
        };
        let first = store
            .list_records_rev(RecordKind::Decision, "a/", None, 2)
            .await
            .unwrap();
        assert_eq!(keys(first), ["a/3", "a/2"]);
        let next = store
            .list_records_rev(RecordKind::Decision, "a/", Some("a/2".into()), 2)
            .await
            .unwrap();
        assert_eq!(keys(next), ["a/1"]);
        let none = store
            .list_records_rev(RecordKind::Decision, "a/", Some("a/1".into()), 2)
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
