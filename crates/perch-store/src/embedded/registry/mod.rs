//! `RegistryStore` on redb: one file, ACID transactions, every commit fsynced before it returns.
//!
//! - `tables`: the tables, their keys and value encoding.
//! - `registries`, `devices`, `history` (config versions and states), `gateways` (bindings),
//!   `provisioning` (provisioning records): what each owns, as functions on a transaction.
//! - this module: the store handle, which runs those functions — writes on the file's group
//!   commit writer, scans on tokio's blocking pool, point reads on the calling task.
//!
//! Blocking work runs on tokio's blocking pool or the writer thread, never on a runtime thread
//! (point reads excepted: see [`EmbeddedRegistryStore::lookup`]).

mod devices;
mod gateways;
mod history;
mod provisioning;
mod registries;
mod tables;

use std::path::Path;

use perch_core::model::{Device, DeviceConfig, DeviceState, Registry};
use perch_core::{DeviceId, DeviceRef, LocationName, RegistryName};
use redb::Database;
use serde::de::DeserializeOwned;

use self::history::HistoryTable;
use self::tables::{
    CONFIG_VERSIONS, DEVICE_GATEWAYS, DEVICE_NUM_IDS, DEVICES, GATEWAY_DEVICES, RECORDS,
    REGISTRIES, STATES,
};
use super::backend;
use super::commit::Committer;
use crate::registry::{
    DeviceFilter, DeviceRecordUpdate, DeviceUpdate, RecordKind, RecordUpdate, RegistryStore,
    RegistryUpdate,
};
use crate::{Error, Result};

/// The registry in a redb file.
#[derive(Debug, Clone)]
pub struct EmbeddedRegistryStore {
    committer: Committer,
}

impl EmbeddedRegistryStore {
    /// Opens (or creates) the registry file.
    pub fn open(path: &Path) -> Result<EmbeddedRegistryStore> {
        let committer = Committer::open(path, "perch-registry-commit", |txn| {
            // Every table up front, so that read transactions never meet a missing one.
            txn.open_table(REGISTRIES).map_err(backend)?;
            txn.open_table(DEVICES).map_err(backend)?;
            txn.open_table(DEVICE_NUM_IDS).map_err(backend)?;
            txn.open_table(CONFIG_VERSIONS).map_err(backend)?;
            txn.open_table(STATES).map_err(backend)?;
            txn.open_table(GATEWAY_DEVICES).map_err(backend)?;
            txn.open_table(DEVICE_GATEWAYS).map_err(backend)?;
            txn.open_table(RECORDS).map_err(backend)?;
            Ok(())
        })?;
        Ok(EmbeddedRegistryStore { committer })
    }

    /// Runs a point read on the calling task. It touches a handful of B-tree pages, nearly always
    /// in redb's page cache, so it takes microseconds: less than the two thread hand-offs of
    /// `spawn_blocking` would cost. Scans (lists) still go to the blocking pool.
    async fn lookup<T>(&self, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        f(&*self.committer.database()?)
    }

    /// The newest `limit` entries of a device's config or state history (`table`).
    async fn history<T: DeserializeOwned + Send + 'static>(
        &self,
        table: HistoryTable,
        registry: &RegistryName,
        device: &DeviceRef,
        limit: usize,
    ) -> Result<Vec<T>> {
        let (registry, device) = (registry.clone(), device.clone());
        self.committer
            .read(move |db| history::list(db, table, &registry, &device, limit))
            .await
    }
}

#[async_trait::async_trait]
impl RegistryStore for EmbeddedRegistryStore {
    async fn create_registry(&self, registry: Registry) -> Result<Registry> {
        self.committer
            .write(move |txn| registries::create(txn, registry))
            .await
    }

    async fn get_registry(&self, name: &RegistryName) -> Result<Registry> {
        self.lookup(|db| registries::get(db, name)).await
    }

    async fn list_registries(
        &self,
        location: &LocationName,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Registry>> {
        let location = location.clone();
        self.committer
            .read(move |db| registries::list(db, &location, after.as_deref(), limit))
            .await
    }

    async fn update_registry(
        &self,
        name: &RegistryName,
        update: RegistryUpdate,
    ) -> Result<Registry> {
        let name = name.clone();
        self.committer
            .write(move |txn| registries::update(txn, &name, update))
            .await
    }

    async fn delete_registry(&self, name: &RegistryName) -> Result<()> {
        let name = name.clone();
        self.committer
            .write(move |txn| registries::delete(txn, &name))
            .await
    }

    async fn create_devices(
        &self,
        registry: &RegistryName,
        devices: Vec<Device>,
    ) -> Result<Vec<Device>> {
        let registry = registry.clone();
        self.committer
            .write(move |txn| devices::insert(txn, &registry, devices))
            .await
    }

    async fn create_device_with_records(
        &self,
        registry: &RegistryName,
        device: Device,
        updates: Vec<(RecordKind, String, DeviceRecordUpdate)>,
    ) -> Result<Device> {
        let registry = registry.clone();
        self.committer
            .write(move |txn| {
                let device = devices::insert(txn, &registry, vec![device])?
                    .pop()
                    .ok_or_else(|| backend("no device was inserted"))?;
                for (kind, key, update) in updates {
                    provisioning::update(txn, kind, &key, |current| update(&device, current))?;
                }
                Ok(device)
            })
            .await
    }

    async fn get_device(&self, registry: &RegistryName, device: &DeviceRef) -> Result<Device> {
        self.lookup(|db| devices::get(db, registry, device)).await
    }

    async fn list_devices(
        &self,
        registry: &RegistryName,
        after: Option<DeviceId>,
        limit: usize,
        filter: DeviceFilter,
    ) -> Result<Vec<Device>> {
        let registry = registry.clone();
        self.committer
            .read(move |db| devices::list(db, &registry, after.as_ref(), limit, &filter))
            .await
    }

    async fn update_device(
        &self,
        registry: &RegistryName,
        device: &DeviceRef,
        update: DeviceUpdate,
    ) -> Result<Device> {
        let (registry, device) = (registry.clone(), device.clone());
        self.committer
            .write(move |txn| devices::update(txn, &registry, &device, update))
            .await
    }

    async fn update_devices(
        &self,
        updates: Vec<(RegistryName, DeviceRef, DeviceUpdate)>,
    ) -> Result<Vec<Result<Device>>> {
        self.committer
            .write(move |txn| {
                updates
                    .into_iter()
                    .map(|(registry, device, update)| {
                        match devices::update(txn, &registry, &device, update) {
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
        self.committer
            .write(move |txn| devices::delete(txn, &registry, &device))
            .await
    }

    async fn list_config_versions(
        &self,
        registry: &RegistryName,
        device: &DeviceRef,
        limit: usize,
    ) -> Result<Vec<DeviceConfig>> {
        self.history(CONFIG_VERSIONS, registry, device, limit).await
    }

    async fn list_states(
        &self,
        registry: &RegistryName,
        device: &DeviceRef,
        limit: usize,
    ) -> Result<Vec<DeviceState>> {
        self.history(STATES, registry, device, limit).await
    }

    async fn bind_device_to_gateway(
        &self,
        registry: &RegistryName,
        gateway_num_id: u64,
        device_num_id: u64,
    ) -> Result<()> {
        let registry = registry.clone();
        self.committer
            .write(move |txn| gateways::bind(txn, &registry, gateway_num_id, device_num_id))
            .await
    }

    async fn unbind_device_from_gateway(
        &self,
        registry: &RegistryName,
        gateway_num_id: u64,
        device_num_id: u64,
    ) -> Result<()> {
        let registry = registry.clone();
        self.committer
            .write(move |txn| gateways::unbind(txn, &registry, gateway_num_id, device_num_id))
            .await
    }

    async fn devices_bound_to_gateway(&self, gateway_num_id: u64) -> Result<Vec<u64>> {
        self.committer
            .read(move |db| gateways::bound(db, GATEWAY_DEVICES, gateway_num_id))
            .await
    }

    async fn gateways_bound_to_device(&self, device_num_id: u64) -> Result<Vec<u64>> {
        self.committer
            .read(move |db| gateways::bound(db, DEVICE_GATEWAYS, device_num_id))
            .await
    }

    async fn put_record(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        create_only: bool,
    ) -> Result<()> {
        let key = key.to_owned();
        self.committer
            .write(move |txn| provisioning::put(txn, kind, &key, &value, create_only))
            .await
    }

    async fn get_records(&self, keys: Vec<(RecordKind, String)>) -> Result<Vec<Option<Vec<u8>>>> {
        self.lookup(|db| provisioning::get_many(db, &keys)).await
    }

    async fn list_records(
        &self,
        kind: RecordKind,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = prefix.to_owned();
        self.committer
            .read(move |db| provisioning::list(db, kind, &prefix, limit))
            .await
    }

    async fn list_records_rev(
        &self,
        kind: RecordKind,
        prefix: &str,
        before: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let Some(range) = provisioning::rev_range(kind, prefix, before.as_deref()) else {
            return Ok(Vec::new());
        };
        self.committer
            .read(move |db| provisioning::list_rev(db, kind, range, limit))
            .await
    }

    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.committer
            .write(move |txn| provisioning::delete(txn, kind, &key))
            .await
    }

    async fn update_records(
        &self,
        updates: Vec<(RecordKind, String, RecordUpdate)>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        self.committer
            .write(move |txn| {
                updates
                    .into_iter()
                    .map(|(kind, key, update)| provisioning::update(txn, kind, &key, update))
                    .collect()
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use perch_core::model::Registry;
    use perch_core::{ErrorCode, Rejection};

    fn registry() -> Registry {
        Registry::new("p", "us-central1", "reg".parse().unwrap())
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
