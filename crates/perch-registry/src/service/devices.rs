//! Devices: create (one, many in one transaction, or one with provisioning's records), get,
//! update (by mask) and delete, with the checks of their metadata and credentials.

use std::collections::{BTreeMap, HashSet};

use perch_core::limits::{
    DEVICE_CREDENTIALS_MAX, METADATA_KEY_MAX_BYTES, METADATA_PAIRS_MAX, METADATA_TOTAL_MAX_BYTES,
    METADATA_VALUE_MAX_BYTES,
};
use perch_core::model::{Device, DeviceConfig, DeviceCredential, GatewayType, Registry};
use perch_core::{DeviceName, ErrorCode, RegistryName, Rejection};
use perch_store::{DeviceRecordUpdate, RecordKind};

use super::config_state::check_config_data;
use super::{DevicePatch, DeviceUpdateField, RegistryService, mask_fields};
use crate::events::RegistryEvent;
use crate::{Result, keys};

fn is_valid_metadata_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= METADATA_KEY_MAX_BYTES
        && b[0].is_ascii_alphabetic()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.+~%".contains(c))
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), Rejection> {
    if metadata.len() > METADATA_PAIRS_MAX {
        return Err(Rejection::invalid_argument(format!(
            "a device has at most {METADATA_PAIRS_MAX} metadata pairs, got {}",
            metadata.len()
        )));
    }
    let mut total = 0;
    for (key, value) in metadata {
        if !is_valid_metadata_key(key) {
            return Err(Rejection::invalid_argument(format!(
                "the metadata key '{key}' is invalid; it starts with a letter, has letters, digits and -_.+~%, and at most {METADATA_KEY_MAX_BYTES} bytes"
            )));
        }
        if value.len() > METADATA_VALUE_MAX_BYTES {
            return Err(Rejection::invalid_argument(format!(
                "the metadata value of '{key}' has {} bytes; the limit is {METADATA_VALUE_MAX_BYTES}",
                value.len()
            )));
        }
        total += key.len() + value.len();
    }
    if total > METADATA_TOTAL_MAX_BYTES {
        return Err(Rejection::invalid_argument(format!(
            "the metadata has {total} bytes of keys and values; the limit is {METADATA_TOTAL_MAX_BYTES}"
        )));
    }
    Ok(())
}

/// Checks new device credentials: count, each key against its format, and the registry's CAs.
fn check_device_credentials(
    credentials: &[DeviceCredential],
    registry: &Registry,
) -> Result<(), Rejection> {
    if credentials.len() > DEVICE_CREDENTIALS_MAX {
        return Err(Rejection::invalid_argument(format!(
            "a device has at most {DEVICE_CREDENTIALS_MAX} credentials, got {}; delete one first",
            credentials.len()
        )));
    }
    let cas: Vec<String> = registry
        .credentials
        .iter()
        .map(|c| c.certificate_pem.clone())
        .collect();
    for (i, credential) in credentials.iter().enumerate() {
        keys::parse_device_key(credential.format, &credential.key)
            .map_err(|r| Rejection::invalid_argument(format!("credentials[{i}]: {}", r.message)))?;
        if !cas.is_empty() {
            if !credential.format.is_x509() {
                return Err(Rejection::invalid_argument(format!(
                    "credentials[{i}]: the registry has CA certificates, so device credentials must be X.509 certificates signed by one of them"
                )));
            }
            keys::check_signed_by_registry_ca(&credential.key, &cas).map_err(|r| {
                Rejection::invalid_argument(format!("credentials[{i}]: {}", r.message))
            })?;
        }
    }
    Ok(())
}

impl RegistryService {
    /// Creates a device; its numeric id is assigned, and its config becomes version 1.
    pub async fn create_device(&self, parent: &RegistryName, device: Device) -> Result<Device> {
        let mut created = self.create_devices(parent, vec![device]).await?;
        created.pop().ok_or_else(|| {
            Rejection::new(ErrorCode::Internal, "the store created no device").into()
        })
    }

    /// Creates many devices in one transaction (bulk import, benchmarks); all or nothing.
    pub async fn create_devices(
        &self,
        parent: &RegistryName,
        devices: Vec<Device>,
    ) -> Result<Vec<Device>> {
        let devices = self.prepare_new_devices(parent, devices).await?;
        Ok(self.store.create_devices(parent, devices).await?)
    }

    /// Creates one device and applies record writes in the same transaction (fleet
    /// provisioning: quota, decision); all or nothing.
    pub async fn create_device_with_records(
        &self,
        parent: &RegistryName,
        device: Device,
        records: Vec<(RecordKind, String, DeviceRecordUpdate)>,
    ) -> Result<Device> {
        let device = self
            .prepare_new_devices(parent, vec![device])
            .await?
            .pop()
            .ok_or_else(|| Rejection::new(ErrorCode::Internal, "no device to create"))?;
        Ok(self
            .store
            .create_device_with_records(parent, device, records)
            .await?)
    }

    /// Checks new devices against their registry and sets what creation sets (config v1).
    async fn prepare_new_devices(
        &self,
        parent: &RegistryName,
        mut devices: Vec<Device>,
    ) -> Result<Vec<Device>> {
        self.check_location(&parent.location())?;
        let registry = self.store.get_registry(parent).await?;
        let now = self.clock.now();
        let mut seen = HashSet::new();
        for device in &mut devices {
            if !seen.insert(device.id.clone()) {
                return Err(Rejection::already_exists(&device.id).into());
            }
            if device.config.version != 0 {
                return Err(Rejection::invalid_argument(format!(
                    "the config version of a new device must be 0 (unset), got {}",
                    device.config.version
                ))
                .into());
            }
            check_config_data(&device.config.binary_data)?;
            check_device_credentials(&device.credentials, &registry)?;
            check_metadata(&device.metadata)?;
            if device.gateway_config.gateway_type == GatewayType::Unspecified {
                device.gateway_config.gateway_type = GatewayType::NonGateway;
            }
            device.config = DeviceConfig {
                version: 1,
                cloud_update_time: Some(now),
                device_ack_time: None,
                binary_data: std::mem::take(&mut device.config.binary_data),
            };
        }
        Ok(devices)
    }

    pub async fn get_device(&self, name: &DeviceName) -> Result<Device> {
        self.check_location(&name.registry.location())?;
        Ok(self.store.get_device(&name.registry, &name.device).await?)
    }

    pub async fn update_device(
        &self,
        name: &DeviceName,
        patch: DevicePatch,
        mask: &[String],
    ) -> Result<Device> {
        self.check_location(&name.registry.location())?;
        let fields = mask_fields(mask, DeviceUpdateField::parse)?;
        if fields.contains(&DeviceUpdateField::Credentials) {
            let registry = self.store.get_registry(&name.registry).await?;
            check_device_credentials(&patch.credentials, &registry)?;
        }
        if fields.contains(&DeviceUpdateField::Metadata) {
            check_metadata(&patch.metadata)?;
        }
        let update = Box::new(move |device: &mut Device| {
            for field in fields {
                match field {
                    DeviceUpdateField::Credentials => {
                        device.credentials = patch.credentials.clone()
                    }
                    DeviceUpdateField::Blocked => device.blocked = patch.blocked,
                    DeviceUpdateField::Metadata => device.metadata = patch.metadata.clone(),
                    DeviceUpdateField::LogLevel => device.log_level = patch.log_level,
                    DeviceUpdateField::GatewayAuthMethod => {
                        device.gateway_config.gateway_auth_method = patch.gateway_auth_method
                    }
                }
            }
            Ok(())
        });
        let device = self
            .store
            .update_device(&name.registry, &name.device, update)
            .await?;
        self.emit(RegistryEvent::DeviceChanged {
            registry: name.registry.clone(),
            device: Box::new(device.clone()),
        });
        Ok(device)
    }

    pub async fn delete_device(&self, name: &DeviceName) -> Result<Device> {
        self.check_location(&name.registry.location())?;
        let device = self
            .store
            .delete_device(&name.registry, &name.device)
            .await?;
        self.emit(RegistryEvent::DeviceDeleted {
            registry: name.registry.clone(),
            num_id: device.num_id,
        });
        Ok(device)
    }
}
