//! The registry store trait: registries, devices, config and state history, gateway bindings.

use perch_core::model::{Device, DeviceConfig, DeviceState, Registry};
use perch_core::{DeviceId, DeviceRef, LocationName, RegistryName, Rejection};

use crate::Result;

/// A read-modify-write step on a registry, run inside the store's transaction.
pub type RegistryUpdate = Box<dyn FnOnce(&mut Registry) -> Result<(), Rejection> + Send>;
/// A read-modify-write step on a device, run inside the store's transaction.
pub type DeviceUpdate = Box<dyn FnOnce(&mut Device) -> Result<(), Rejection> + Send>;
/// Kinds of auxiliary registry records (fleet provisioning), stored as opaque bytes the registry
/// encodes; keys are resource-name-like strings so a registry's records form a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Bootstrap,
    PolicyEntry,
    Decision,
    /// Per-registry provisioning settings (the webhook).
    Settings,
    /// Re-provisioning requests waiting for an operator.
    Approval,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Bootstrap => "bootstrap",
            RecordKind::PolicyEntry => "policy",
            RecordKind::Decision => "decision",
            RecordKind::Settings => "settings",
            RecordKind::Approval => "approval",
        }
    }
}

/// A read-modify-write step on a record: sees the current bytes (None if absent), returns the
/// new bytes (None deletes) or refuses.
pub type RecordUpdate =
    Box<dyn FnOnce(Option<Vec<u8>>) -> Result<Option<Vec<u8>>, Rejection> + Send>;

/// A record write made together with a new device (see
/// [`RegistryStore::create_device_with_records`]): sees the device as stored, numeric id
/// included, and the record's current bytes; returns the new bytes (None deletes) or refuses.
pub type DeviceRecordUpdate =
    Box<dyn FnOnce(&Device, Option<Vec<u8>>) -> Result<Option<Vec<u8>>, Rejection> + Send>;

/// A predicate that list scans apply to each device.
pub type DeviceFilter = Box<dyn Fn(&Device) -> bool + Send>;

/// Durable storage of the device registry.
///
/// Invariants every implementation keeps:
/// - numeric device ids are assigned by the store, unique across all registries, `< 2^53`;
/// - a device's `config` and `state` are its newest; each new config version and each new state
///   written through `update_device` is also appended to the history, which keeps the newest
///   `CONFIG_VERSIONS_KEPT` / `STATES_KEPT`;
/// - a registry with devices, and a gateway with bound devices, cannot be deleted.
#[async_trait::async_trait]
pub trait RegistryStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a new registry; `ALREADY_EXISTS` if its name is taken.
    async fn create_registry(&self, registry: Registry) -> Result<Registry>;
    /// The registry, or `NOT_FOUND`.
    async fn get_registry(&self, name: &RegistryName) -> Result<Registry>;
    /// Registries of a location in id order, starting after `after`.
    async fn list_registries(
        &self,
        location: &LocationName,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Registry>>;
    async fn update_registry(
        &self,
        name: &RegistryName,
        update: RegistryUpdate,
    ) -> Result<Registry>;
    /// Deletes an empty registry; `FAILED_PRECONDITION` while it has devices.
    async fn delete_registry(&self, name: &RegistryName) -> Result<()>;

    /// Stores new devices in one transaction, assigning their numeric ids; all or nothing.
    /// `ALREADY_EXISTS` if any id is taken, `NOT_FOUND` if the registry is missing.
    async fn create_devices(
        &self,
        registry: &RegistryName,
        devices: Vec<Device>,
    ) -> Result<Vec<Device>>;
    /// Stores one new device and, in the same transaction, applies `records` in order; all or
    /// nothing, so a refusal by any record update leaves no device behind. Fleet provisioning
    /// reserves its quota, creates the device and stores its decision in one commit this way.
    async fn create_device_with_records(
        &self,
        registry: &RegistryName,
        device: Device,
        records: Vec<(RecordKind, String, DeviceRecordUpdate)>,
    ) -> Result<Device>;
    /// The device, by string or numeric id, or `NOT_FOUND`.
    async fn get_device(&self, registry: &RegistryName, device: &DeviceRef) -> Result<Device>;
    /// Devices of a registry in id order, starting after `after`, that pass `filter`.
    async fn list_devices(
        &self,
        registry: &RegistryName,
        after: Option<DeviceId>,
        limit: usize,
        filter: DeviceFilter,
    ) -> Result<Vec<Device>>;
    async fn update_device(
        &self,
        registry: &RegistryName,
        device: &DeviceRef,
        update: DeviceUpdate,
    ) -> Result<Device>;
    /// Applies many device updates in one transaction (one fsync): each succeeds or fails
    /// alone — a missing device or a refused update is that entry's `Err` — and only a storage
    /// failure fails the call.
    async fn update_devices(
        &self,
        updates: Vec<(RegistryName, DeviceRef, DeviceUpdate)>,
    ) -> Result<Vec<Result<Device>>>;
    /// Deletes a device with its history and bindings; `FAILED_PRECONDITION` for a gateway that
    /// still has bound devices.
    async fn delete_device(&self, registry: &RegistryName, device: &DeviceRef) -> Result<Device>;
    /// Config versions, newest first, at most `limit` (0 = all kept).
    async fn list_config_versions(
        &self,
        registry: &RegistryName,
        device: &DeviceRef,
        limit: usize,
    ) -> Result<Vec<DeviceConfig>>;
    /// State reports, newest first, at most `limit` (0 = all kept).
    async fn list_states(
        &self,
        registry: &RegistryName,
        device: &DeviceRef,
        limit: usize,
    ) -> Result<Vec<DeviceState>>;

    /// Binds a device to a gateway, both by numeric id in `registry`; idempotent.
    async fn bind_device_to_gateway(
        &self,
        registry: &RegistryName,
        gateway_num_id: u64,
        device_num_id: u64,
    ) -> Result<()>;
    /// Unbinds; `NOT_FOUND` if the pair was not bound.
    async fn unbind_device_from_gateway(
        &self,
        registry: &RegistryName,
        gateway_num_id: u64,
        device_num_id: u64,
    ) -> Result<()>;
    /// Numeric ids of the devices bound to a gateway.
    async fn devices_bound_to_gateway(&self, gateway_num_id: u64) -> Result<Vec<u64>>;
    /// Numeric ids of the gateways a device is bound to.
    async fn gateways_bound_to_device(&self, device_num_id: u64) -> Result<Vec<u64>>;

    /// Stores a record; with `create_only`, an existing key is `ALREADY_EXISTS`.
    async fn put_record(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        create_only: bool,
    ) -> Result<()>;
    async fn get_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>> {
        let mut found = self.get_records(vec![(kind, key.to_owned())]).await?;
        Ok(found.pop().flatten())
    }
    /// Several records read in one snapshot, in the order asked.
    async fn get_records(&self, keys: Vec<(RecordKind, String)>) -> Result<Vec<Option<Vec<u8>>>>;
    /// Records whose key starts with `prefix`, in key order, at most `limit`.
    async fn list_records(
        &self,
        kind: RecordKind,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>>;
    /// Records whose key starts with `prefix` and sorts before `before` (all of them when
    /// None), newest key first, at most `limit`: pages backwards through time-keyed records.
    async fn list_records_rev(
        &self,
        kind: RecordKind,
        prefix: &str,
        before: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>>;
    /// Deletes a record; false if it did not exist.
    async fn delete_record(&self, kind: RecordKind, key: &str) -> Result<bool>;
    /// Atomically reads, changes and writes one record; returns what was written.
    async fn update_record(
        &self,
        kind: RecordKind,
        key: &str,
        update: RecordUpdate,
    ) -> Result<Option<Vec<u8>>> {
        let mut written = self
            .update_records(vec![(kind, key.to_owned(), update)])
            .await?;
        Ok(written.pop().flatten())
    }
    /// Reads, changes and writes several records in one transaction, in order; all or nothing.
    /// Returns what was written to each.
    async fn update_records(
        &self,
        updates: Vec<(RecordKind, String, RecordUpdate)>,
    ) -> Result<Vec<Option<Vec<u8>>>>;
}
