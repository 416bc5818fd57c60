//! The registry file's tables, how their keys are made, how values are encoded (MessagePack),
//! and the `NOT_FOUND` errors they answer with. Keys are resource names, so a location's
//! registries and a registry's devices are contiguous ranges in id order.

use perch_core::{DeviceId, DeviceRef, RegistryName, Rejection};
use redb::TableDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::registry::RecordKind;
use crate::{Error, Result};

/// `projects/P/locations/L/registries/R` → Registry.
pub(super) const REGISTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("registries");
/// `…/registries/R/devices/D` → Device.
pub(super) const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
/// numId → device key.
pub(super) const DEVICE_NUM_IDS: TableDefinition<u64, &str> =
    TableDefinition::new("device_num_ids");
/// (numId, version) → DeviceConfig.
pub(super) const CONFIG_VERSIONS: TableDefinition<(u64, i64), &[u8]> =
    TableDefinition::new("config_versions");
/// (numId, unix nanos) → DeviceState.
pub(super) const STATES: TableDefinition<(u64, i64), &[u8]> = TableDefinition::new("states");
/// (gateway numId, device numId).
pub(super) const GATEWAY_DEVICES: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("gateway_devices");
/// (device numId, gateway numId): the reverse of `GATEWAY_DEVICES`.
pub(super) const DEVICE_GATEWAYS: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("device_gateways");
/// `kind\0key` → opaque provisioning record bytes.
pub(super) const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(value).map_err(super::backend)
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(super::backend)
}

pub(super) fn registry_key(name: &RegistryName) -> String {
    name.to_string()
}

pub(super) fn devices_prefix(registry: &RegistryName) -> String {
    format!("{registry}/devices/")
}

pub(super) fn device_key(registry: &RegistryName, id: &DeviceId) -> String {
    format!("{registry}/devices/{id}")
}

/// The exclusive upper bound of the keys that start with `prefix` (which ends in `/`).
pub(super) fn prefix_end(prefix: &str) -> String {
    debug_assert!(prefix.ends_with('/'));
    format!("{}0", &prefix[..prefix.len() - 1])
}

/// The first key of a page that starts after `after` (the smallest key strictly after
/// `prefix + after`), or the first key of the range.
pub(super) fn page_start(prefix: &str, after: Option<&str>) -> String {
    match after {
        Some(after) => format!("{prefix}{after}\0"),
        None => prefix.to_owned(),
    }
}

pub(super) fn record_key(kind: RecordKind, key: &str) -> String {
    format!("{}\0{key}", kind.as_str())
}

pub(super) fn timestamp_key(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

pub(super) fn registry_not_found(name: &RegistryName) -> Error {
    Rejection::not_found(format!(
        "The registry with the name '{name}' doesn't exist."
    ))
    .into()
}

pub(super) fn device_not_found(registry: &RegistryName, device: &DeviceRef) -> Error {
    Rejection::not_found(format!(
        "A device with the name '{registry}/devices/{device}' doesn't exist."
    ))
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_holds_exactly_the_keys_under_it() {
        let registry =
            RegistryName::parse("name", "projects/p/locations/l/registries/reg").unwrap();
        let prefix = devices_prefix(&registry);
        let end = prefix_end(&prefix);
        let inside = device_key(&registry, &"zzz".parse().unwrap());
        assert!(prefix.as_str() <= inside.as_str() && inside < end);
        // A registry whose id extends this one's sorts outside the range.
        let sibling = "projects/p/locations/l/registries/reg2/devices/a";
        assert!(sibling >= end.as_str());
        let start = page_start(&prefix, Some("dev-a"));
        assert!(device_key(&registry, &"dev-a".parse().unwrap()) < start);
        assert!(device_key(&registry, &"dev-a0".parse().unwrap()) > start);
        assert_eq!(page_start(&prefix, None), prefix);
    }
}
