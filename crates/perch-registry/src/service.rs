//! The registry service: every DeviceManager operation on domain types, with its validation.
//!
//! The API layers (`api::grpc`, `api::rest`) convert wire types to these calls and back; the
//! rules live here once.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::Duration;
use perch_core::limits::{
    CONFIG_DATA_MAX_BYTES, DEVICE_CREDENTIALS_MAX, EVENT_NOTIFICATION_CONFIGS_MAX,
    GATEWAY_BOUND_DEVICES_MAX, LIST_FILTER_IDS_MAX, LIST_PAGE_SIZE_DEFAULT, LIST_PAGE_SIZE_MAX,
    METADATA_KEY_MAX_BYTES, METADATA_PAIRS_MAX, METADATA_TOTAL_MAX_BYTES, METADATA_VALUE_MAX_BYTES,
    REGISTRY_CREDENTIALS_MAX, SUBFOLDER_MATCHES_MAX_BYTES,
};
use perch_core::model::{
    Device, DeviceConfig, DeviceCredential, DeviceState, EventNotificationConfig,
    GatewayAuthMethod, GatewayType, LogLevel, Registry, RegistryCredential,
};
use perch_core::{
    Clock, DeviceId, DeviceName, DeviceRef, ErrorCode, LocationName, RegistryName, Rejection,
};
use perch_store::{DeviceRecordUpdate, RecordKind, RegistryStore};

use crate::events::{CertificateIssuer, CommandSink, EVENT_CHANNEL_CAPACITY, RegistryEvent};
use crate::keys;
use crate::{Result, page};

/// Knobs of the registry service; defaults follow IoT Core.
#[derive(Debug, Clone)]
pub struct RegistryServiceOptions {
    /// Locations accepted in names; `None` accepts any (SPEC.md §1.1, Perch default).
    pub allowed_locations: Option<Vec<String>>,
    /// Least time between two config updates of one device (IoT Core: 1 s); zero disables.
    pub config_update_min_interval: Duration,
    /// Fleet provisioning's limits (decisions kept per bootstrap, decision retention).
    pub provisioning: crate::provisioning::ProvisioningOptions,
}

impl Default for RegistryServiceOptions {
    fn default() -> Self {
        RegistryServiceOptions {
            allowed_locations: None,
            config_update_min_interval: Duration::seconds(1),
            provisioning: Default::default(),
        }
    }
}

/// Largest command payload (IoT Core: 256 KB).
pub const COMMAND_DATA_MAX_BYTES: usize = 256 * 1024;

/// Registry fields an update mask may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryUpdateField {
    EventNotificationConfigs,
    StateNotificationConfig,
    MqttConfig,
    HttpConfig,
    Credentials,
    LogLevel,
}

impl RegistryUpdateField {
    fn parse(path: &str) -> Result<RegistryUpdateField, Rejection> {
        Ok(match crate::mask::top_level(path) {
            "event_notification_configs" | "event_notification_config" => {
                RegistryUpdateField::EventNotificationConfigs
            }
            "state_notification_config" => RegistryUpdateField::StateNotificationConfig,
            "mqtt_config" => RegistryUpdateField::MqttConfig,
            "http_config" => RegistryUpdateField::HttpConfig,
            "credentials" => RegistryUpdateField::Credentials,
            "log_level" => RegistryUpdateField::LogLevel,
            _ => {
                return Err(Rejection::invalid_argument(format!(
                    "the update mask path '{path}' is not a mutable registry field; use event_notification_configs, state_notification_config, mqtt_config, http_config, credentials or log_level"
                )));
            }
        })
    }
}

/// Device fields an update mask may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceUpdateField {
    Credentials,
    Blocked,
    Metadata,
    LogLevel,
    GatewayAuthMethod,
}

impl DeviceUpdateField {
    fn parse(path: &str) -> Result<DeviceUpdateField, Rejection> {
        Ok(match path {
            "credentials" => DeviceUpdateField::Credentials,
            "blocked" => DeviceUpdateField::Blocked,
            "metadata" => DeviceUpdateField::Metadata,
            "log_level" => DeviceUpdateField::LogLevel,
            "gateway_config.gateway_auth_method" => DeviceUpdateField::GatewayAuthMethod,
            _ => {
                return Err(Rejection::invalid_argument(format!(
                    "the update mask path '{path}' is not a mutable device field; use credentials, blocked, metadata, log_level or gateway_config.gateway_auth_method"
                )));
            }
        })
    }
}

/// New values for a registry update; only the fields named in the mask are read.
#[derive(Debug, Clone, Default)]
pub struct RegistryPatch {
    pub event_notification_configs: Vec<EventNotificationConfig>,
    pub state_notification_topic: String,
    pub mqtt_state: perch_core::model::MqttState,
    pub http_state: perch_core::model::HttpState,
    pub credentials: Vec<String>,
    pub log_level: LogLevel,
}

/// New values for a device update; only the fields named in the mask are read.
#[derive(Debug, Clone, Default)]
pub struct DevicePatch {
    pub credentials: Vec<DeviceCredential>,
    pub blocked: bool,
    pub metadata: BTreeMap<String, String>,
    pub log_level: LogLevel,
    pub gateway_auth_method: GatewayAuthMethod,
}

/// The `gatewayListOptions` oneof of ListDevices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayListOption {
    None,
    GatewayType(GatewayType),
    AssociationsGatewayId(String),
    AssociationsDeviceId(String),
}

/// A ListDevices query.
#[derive(Debug, Clone)]
pub struct DeviceListQuery {
    pub device_ids: Vec<String>,
    pub device_num_ids: Vec<u64>,
    pub gateway: GatewayListOption,
    pub page_size: usize,
    pub page_token: String,
}

/// A bridge's bookkeeping change as a store update: it cannot refuse.
fn bookkeeping(update: Box<dyn FnOnce(&mut Device) + Send>) -> perch_store::DeviceUpdate {
    Box::new(move |d: &mut Device| {
        update(d);
        Ok(())
    })
}

/// The registry service.
#[derive(Debug, Clone)]
pub struct RegistryService {
    store: Arc<dyn RegistryStore>,
    clock: Arc<dyn Clock>,
    options: RegistryServiceOptions,
    events: tokio::sync::broadcast::Sender<RegistryEvent>,
    commands: Arc<std::sync::OnceLock<Arc<dyn CommandSink>>>,
    issuer: Arc<std::sync::OnceLock<Arc<dyn CertificateIssuer>>>,
}

fn clamp_page_size(requested: usize) -> usize {
    match requested {
        0 => LIST_PAGE_SIZE_DEFAULT,
        n => n.min(LIST_PAGE_SIZE_MAX),
    }
}

fn is_valid_topic_name(name: &str) -> bool {
    matches!(name.split('/').collect::<Vec<_>>()[..],
        ["projects", p, "topics", t] if !p.is_empty() && !t.is_empty())
}

fn check_topic(field: &str, name: &str) -> Result<(), Rejection> {
    if is_valid_topic_name(name) {
        Ok(())
    } else {
        Err(Rejection::invalid_argument(format!(
            "'{field}' must be a Pub/Sub topic name 'projects/{{project}}/topics/{{topic}}', got '{name}'"
        )))
    }
}

fn is_valid_subfolder_match(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b.len() <= SUBFOLDER_MATCHES_MAX_BYTES
        && b[0].is_ascii_alphabetic()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-._+~%".contains(c))
}

fn check_event_configs(configs: &[EventNotificationConfig]) -> Result<(), Rejection> {
    if configs.len() > EVENT_NOTIFICATION_CONFIGS_MAX {
        return Err(Rejection::invalid_argument(format!(
            "a registry has at most {EVENT_NOTIFICATION_CONFIGS_MAX} event notification configs, got {}",
            configs.len()
        )));
    }
    for config in configs {
        check_topic(
            "eventNotificationConfigs.pubsubTopicName",
            &config.pubsub_topic_name,
        )?;
        if !config.subfolder_matches.is_empty()
            && !is_valid_subfolder_match(&config.subfolder_matches)
        {
            return Err(Rejection::invalid_argument(format!(
                "the subfolderMatches '{}' is invalid; it starts with a letter, has letters, digits and -._+~%, and at most {SUBFOLDER_MATCHES_MAX_BYTES} bytes",
                config.subfolder_matches
            )));
        }
    }
    Ok(())
}

fn parse_registry_credentials(pems: &[String]) -> Result<Vec<RegistryCredential>, Rejection> {
    if pems.len() > REGISTRY_CREDENTIALS_MAX {
        return Err(Rejection::invalid_argument(format!(
            "a registry has at most {REGISTRY_CREDENTIALS_MAX} CA certificates, got {}",
            pems.len()
        )));
    }
    pems.iter()
        .map(|pem| {
            Ok(RegistryCredential {
                details: keys::parse_registry_certificate(pem)?,
                certificate_pem: pem.clone(),
            })
        })
        .collect()
}

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

fn check_config_data(data: &[u8]) -> Result<(), Rejection> {
    if data.len() > CONFIG_DATA_MAX_BYTES {
        return Err(Rejection::invalid_argument(format!(
            "the config data has {} bytes; the limit is {CONFIG_DATA_MAX_BYTES}",
            data.len()
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
    pub fn new(
        store: Arc<dyn RegistryStore>,
        clock: Arc<dyn Clock>,
        options: RegistryServiceOptions,
    ) -> RegistryService {
        RegistryService {
            store,
            clock,
            options,
            events: tokio::sync::broadcast::channel(EVENT_CHANNEL_CAPACITY).0,
            commands: Arc::new(std::sync::OnceLock::new()),
            issuer: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Changes made through the admin API, for live connections to act on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RegistryEvent> {
        self.events.subscribe()
    }

    /// Where `sendCommandToDevice` delivers; set once by the composition root.
    pub fn set_command_sink(&self, sink: Arc<dyn CommandSink>) {
        let _ = self.commands.set(sink);
    }

    /// Who signs certificates for provisioning CSRs; set once by the composition root.
    pub fn set_certificate_issuer(&self, issuer: Arc<dyn CertificateIssuer>) {
        let _ = self.issuer.set(issuer);
    }

    pub fn certificate_issuer(&self) -> Option<&Arc<dyn CertificateIssuer>> {
        self.issuer.get()
    }

    fn emit(&self, event: RegistryEvent) {
        // No subscriber (no bridge running) is fine.
        let _ = self.events.send(event);
    }

    /// Updates a device for the bridges' own bookkeeping (activity times, state reports, config
    /// acks, last error). Emits no event: these changes come from the device itself.
    pub async fn record_device_activity(
        &self,
        registry: &RegistryName,
        device: &DeviceRef,
        update: Box<dyn FnOnce(&mut Device) + Send>,
    ) -> Result<Device> {
        Ok(self
            .store
            .update_device(registry, device, bookkeeping(update))
            .await?)
    }

    /// Activity times of many devices in one store transaction (the bridge's periodic flush).
    /// Devices deleted meanwhile are skipped; only a storage failure is an error.
    pub async fn record_devices_activity(
        &self,
        updates: Vec<(RegistryName, DeviceRef, Box<dyn FnOnce(&mut Device) + Send>)>,
    ) -> Result<()> {
        let updates = updates
            .into_iter()
            .map(|(registry, device, update)| (registry, device, bookkeeping(update)))
            .collect();
        self.store.update_devices(updates).await?;
        Ok(())
    }

    pub fn store(&self) -> &Arc<dyn RegistryStore> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn options(&self) -> &RegistryServiceOptions {
        &self.options
    }

    fn check_location(&self, location: &LocationName) -> Result<(), Rejection> {
        match &self.options.allowed_locations {
            Some(allowed) if !allowed.contains(&location.location) => {
                Err(Rejection::not_found(format!(
                    "The cloud region '{location}' (location '{}') isn't supported. Valid regions: {{{}}}",
                    location.location,
                    allowed.join(",")
                )))
            }
            _ => Ok(()),
        }
    }

    // ----- registries -----

    /// Creates a registry under `parent`; `registry.project`/`location` are taken from `parent`.
    pub async fn create_registry(
        &self,
        parent: &LocationName,
        mut registry: Registry,
    ) -> Result<Registry> {
        self.check_location(parent)?;
        registry.project = parent.project.clone();
        registry.location = parent.location.clone();
        check_event_configs(&registry.event_notification_configs)?;
        if !registry.state_notification_topic.is_empty() {
            check_topic(
                "stateNotificationConfig.pubsubTopicName",
                &registry.state_notification_topic,
            )?;
        }
        let pems: Vec<String> = registry
            .credentials
            .iter()
            .map(|c| c.certificate_pem.clone())
            .collect();
        registry.credentials = parse_registry_credentials(&pems)?;
        Ok(self.store.create_registry(registry).await?)
    }

    pub async fn get_registry(&self, name: &RegistryName) -> Result<Registry> {
        self.check_location(&name.location())?;
        Ok(self.store.get_registry(name).await?)
    }

    /// A page of registries and the token for the next one (empty at the end).
    pub async fn list_registries(
        &self,
        parent: &LocationName,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<Registry>, String)> {
        self.check_location(parent)?;
        let query = page::fingerprint(&[&parent.to_string()]);
        let after = page::decode(page_token, &query)?;
        let limit = clamp_page_size(page_size);
        let mut registries = self.store.list_registries(parent, after, limit + 1).await?;
        let next = if registries.len() > limit {
            registries.truncate(limit);
            registries
                .last()
                .map(|r| page::encode(r.id.as_str(), &query))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((registries, next))
    }

    pub async fn update_registry(
        &self,
        name: &RegistryName,
        patch: RegistryPatch,
        mask: &[String],
    ) -> Result<Registry> {
        self.check_location(&name.location())?;
        if mask.is_empty() {
            return Err(Rejection::invalid_argument(
                "the update mask is empty; name the fields to change in updateMask",
            )
            .into());
        }
        let fields = mask
            .iter()
            .map(|p| RegistryUpdateField::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        for field in &fields {
            match field {
                RegistryUpdateField::EventNotificationConfigs => {
                    check_event_configs(&patch.event_notification_configs)?
                }
                RegistryUpdateField::StateNotificationConfig
                    if !patch.state_notification_topic.is_empty() =>
                {
                    check_topic(
                        "stateNotificationConfig.pubsubTopicName",
                        &patch.state_notification_topic,
                    )?
                }
                _ => {}
            }
        }
        let credentials = if fields.contains(&RegistryUpdateField::Credentials) {
            parse_registry_credentials(&patch.credentials)?
        } else {
            Vec::new()
        };
        let update = Box::new(move |registry: &mut Registry| {
            for field in fields {
                match field {
                    RegistryUpdateField::EventNotificationConfigs => {
                        registry.event_notification_configs =
                            patch.event_notification_configs.clone()
                    }
                    RegistryUpdateField::StateNotificationConfig => {
                        registry.state_notification_topic = patch.state_notification_topic.clone()
                    }
                    RegistryUpdateField::MqttConfig => registry.mqtt_state = patch.mqtt_state,
                    RegistryUpdateField::HttpConfig => registry.http_state = patch.http_state,
                    RegistryUpdateField::Credentials => registry.credentials = credentials.clone(),
                    RegistryUpdateField::LogLevel => registry.log_level = patch.log_level,
                }
            }
            Ok(())
        });
        let registry = self.store.update_registry(name, update).await?;
        self.emit(RegistryEvent::RegistryChanged {
            registry: Box::new(registry.clone()),
        });
        Ok(registry)
    }

    pub async fn delete_registry(&self, name: &RegistryName) -> Result<()> {
        self.check_location(&name.location())?;
        self.store.delete_registry(name).await?;
        self.emit(RegistryEvent::RegistryDeleted { name: name.clone() });
        Ok(())
    }

    // ----- devices -----

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

    /// A page of devices and the token for the next one (empty at the end).
    pub async fn list_devices(
        &self,
        parent: &RegistryName,
        query: DeviceListQuery,
    ) -> Result<(Vec<Device>, String)> {
        self.check_location(&parent.location())?;
        if query.device_ids.len() > LIST_FILTER_IDS_MAX
            || query.device_num_ids.len() > LIST_FILTER_IDS_MAX
        {
            return Err(Rejection::invalid_argument(format!(
                "a device list filter holds at most {LIST_FILTER_IDS_MAX} ids"
            ))
            .into());
        }
        let mut ids: Vec<String> = query.device_ids.clone();
        ids.sort();
        let mut num_ids = query.device_num_ids.clone();
        num_ids.sort_unstable();
        let gateway_key = format!("{:?}", query.gateway);
        let fingerprint = page::fingerprint(&[
            &parent.to_string(),
            &ids.join(","),
            &num_ids
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
            &gateway_key,
        ]);
        let after = page::decode(&query.page_token, &fingerprint)?;
        let limit = clamp_page_size(query.page_size);
        // An unknown registry is NOT_FOUND, not an empty list.
        self.store.get_registry(parent).await?;

        let mut devices = if !ids.is_empty()
            || !num_ids.is_empty()
            || matches!(
                query.gateway,
                GatewayListOption::AssociationsGatewayId(_)
                    | GatewayListOption::AssociationsDeviceId(_)
            ) {
            // Explicit sets: fetch each member, then page over them in id order.
            let mut refs: Vec<DeviceRef> = Vec::new();
            for id in &ids {
                // An id that could never exist simply matches nothing.
                if let Ok(id) = id.parse::<DeviceId>() {
                    refs.push(DeviceRef::Id(id));
                }
            }
            refs.extend(num_ids.iter().map(|n| DeviceRef::NumId(*n)));
            let association = match &query.gateway {
                GatewayListOption::AssociationsGatewayId(gw) => {
                    let gateway = self
                        .store
                        .get_device(parent, &DeviceRef::parse(gw)?)
                        .await?;
                    Some(self.store.devices_bound_to_gateway(gateway.num_id).await?)
                }
                GatewayListOption::AssociationsDeviceId(dev) => {
                    let device = self
                        .store
                        .get_device(parent, &DeviceRef::parse(dev)?)
                        .await?;
                    Some(self.store.gateways_bound_to_device(device.num_id).await?)
                }
                _ => None,
            };
            let candidates: Vec<DeviceRef> = match association {
                Some(associated) if refs.is_empty() => {
                    associated.into_iter().map(DeviceRef::NumId).collect()
                }
                Some(associated) => {
                    let wanted: HashSet<u64> = associated.into_iter().collect();
                    let mut kept = Vec::new();
                    for r in refs {
                        if let Ok(d) = self.store.get_device(parent, &r).await
                            && wanted.contains(&d.num_id)
                        {
                            kept.push(DeviceRef::NumId(d.num_id));
                        }
                    }
                    kept
                }
                None => refs,
            };
            let mut found = BTreeMap::new();
            for r in candidates {
                match self.store.get_device(parent, &r).await {
                    Ok(device) => {
                        found.insert(device.id.clone(), device);
                    }
                    Err(e) if e.code() == ErrorCode::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            found
                .into_values()
                .filter(|d| after.as_deref().is_none_or(|a| d.id.as_str() > a))
                .take(limit + 1)
                .collect::<Vec<_>>()
        } else {
            let after = match after {
                Some(a) => Some(a.parse::<DeviceId>().map_err(|_| {
                    Rejection::invalid_argument("the page token is invalid; pass the nextPageToken of the previous page unchanged")
                })?),
                None => None,
            };
            let filter: perch_store::DeviceFilter = match query.gateway {
                GatewayListOption::GatewayType(GatewayType::Gateway) => {
                    Box::new(|d: &Device| d.gateway_config.is_gateway())
                }
                GatewayListOption::GatewayType(GatewayType::NonGateway) => {
                    Box::new(|d: &Device| !d.gateway_config.is_gateway())
                }
                _ => Box::new(|_: &Device| true),
            };
            self.store
                .list_devices(parent, after, limit + 1, filter)
                .await?
        };
        let next = if devices.len() > limit {
            devices.truncate(limit);
            devices
                .last()
                .map(|d| page::encode(d.id.as_str(), &fingerprint))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((devices, next))
    }

    pub async fn update_device(
        &self,
        name: &DeviceName,
        patch: DevicePatch,
        mask: &[String],
    ) -> Result<Device> {
        self.check_location(&name.registry.location())?;
        if mask.is_empty() {
            return Err(Rejection::invalid_argument(
                "the update mask is empty; name the fields to change in updateMask",
            )
            .into());
        }
        let fields = mask
            .iter()
            .map(|p| DeviceUpdateField::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
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

    /// Stores a new config version; `version_to_update` 0 is unconditional, otherwise it must be
    /// the current version.
    pub async fn modify_config(
        &self,
        name: &DeviceName,
        version_to_update: i64,
        data: Vec<u8>,
    ) -> Result<DeviceConfig> {
        self.check_location(&name.registry.location())?;
        check_config_data(&data)?;
        let now = self.clock.now();
        let min_interval = self.options.config_update_min_interval;
        let update = Box::new(move |device: &mut Device| {
            if version_to_update != 0 && version_to_update != device.config.version {
                return Err(Rejection::failed_precondition(format!(
                    "versionToUpdate is {version_to_update} but the current config version is {}; fetch the device and retry",
                    device.config.version
                )));
            }
            // Version 1 comes from CreateDevice; the throttle is between config updates.
            if min_interval > Duration::zero()
                && device.config.version > 1
                && let Some(last) = device.config.cloud_update_time
                && now < last + min_interval
            {
                return Err(Rejection::new(
                    ErrorCode::ResourceExhausted,
                    format!(
                        "the config of device `{}` was updated less than {} ms ago; a device takes at most one config update per second",
                        device.id,
                        min_interval.num_milliseconds()
                    ),
                ));
            }
            device.config = DeviceConfig {
                version: device.config.version + 1,
                cloud_update_time: Some(now),
                device_ack_time: None,
                binary_data: data,
            };
            Ok(())
        });
        let device = self
            .store
            .update_device(&name.registry, &name.device, update)
            .await?;
        self.emit(RegistryEvent::ConfigChanged {
            registry: name.registry.clone(),
            num_id: device.num_id,
            config: device.config.clone(),
        });
        Ok(device.config)
    }

    pub async fn list_config_versions(
        &self,
        name: &DeviceName,
        num_versions: usize,
    ) -> Result<Vec<DeviceConfig>> {
        self.check_location(&name.registry.location())?;
        Ok(self
            .store
            .list_config_versions(&name.registry, &name.device, num_versions)
            .await?)
    }

    pub async fn list_states(
        &self,
        name: &DeviceName,
        num_states: usize,
    ) -> Result<Vec<DeviceState>> {
        self.check_location(&name.registry.location())?;
        Ok(self
            .store
            .list_states(&name.registry, &name.device, num_states)
            .await?)
    }

    async fn gateway_and_device(
        &self,
        parent: &RegistryName,
        gateway_id: &str,
        device_id: &str,
    ) -> Result<(Device, Device)> {
        self.check_location(&parent.location())?;
        let gateway = self
            .store
            .get_device(parent, &DeviceRef::parse(gateway_id)?)
            .await?;
        let device = self
            .store
            .get_device(parent, &DeviceRef::parse(device_id)?)
            .await?;
        Ok((gateway, device))
    }

    pub async fn bind_device_to_gateway(
        &self,
        parent: &RegistryName,
        gateway_id: &str,
        device_id: &str,
    ) -> Result<()> {
        let (gateway, device) = self
            .gateway_and_device(parent, gateway_id, device_id)
            .await?;
        if !gateway.gateway_config.is_gateway() {
            return Err(Rejection::invalid_argument(format!(
                "device `{}` is not a gateway; create it with gatewayConfig.gatewayType GATEWAY",
                gateway.id
            ))
            .into());
        }
        if device.gateway_config.is_gateway() {
            return Err(Rejection::invalid_argument(format!(
                "`{}` is a gateway; a gateway cannot be bound to another gateway",
                device.id
            ))
            .into());
        }
        if self
            .store
            .devices_bound_to_gateway(gateway.num_id)
            .await?
            .len()
            >= GATEWAY_BOUND_DEVICES_MAX
        {
            return Err(Rejection::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "gateway `{}` already has {GATEWAY_BOUND_DEVICES_MAX} bound devices",
                    gateway.id
                ),
            )
            .into());
        }
        Ok(self
            .store
            .bind_device_to_gateway(parent, gateway.num_id, device.num_id)
            .await?)
    }

    pub async fn unbind_device_from_gateway(
        &self,
        parent: &RegistryName,
        gateway_id: &str,
        device_id: &str,
    ) -> Result<()> {
        let (gateway, device) = self
            .gateway_and_device(parent, gateway_id, device_id)
            .await?;
        self.store
            .unbind_device_from_gateway(parent, gateway.num_id, device.num_id)
            .await?;
        self.emit(RegistryEvent::DeviceUnbound {
            registry: parent.clone(),
            gateway_num_id: gateway.num_id,
            device_num_id: device.num_id,
        });
        Ok(())
    }

    /// Sends a command to a connected device. Until the MQTT bridge delivers commands, no device
    /// is ever subscribed, so this answers `FAILED_PRECONDITION` as IoT Core did for an
    /// unsubscribed device.
    pub async fn send_command(
        &self,
        name: &DeviceName,
        data: &[u8],
        subfolder: &str,
    ) -> Result<()> {
        let device = self.get_device(name).await?;
        if data.len() > COMMAND_DATA_MAX_BYTES {
            return Err(Rejection::invalid_argument(format!(
                "the command data has {} bytes; the limit is {COMMAND_DATA_MAX_BYTES}",
                data.len()
            ))
            .into());
        }
        if subfolder.len() > 256 || subfolder.contains(['+', '#', '\0']) {
            return Err(Rejection::invalid_argument(format!(
                "the command subfolder '{subfolder}' is invalid: at most 256 characters, no '+', '#' or NUL"
            ))
            .into());
        }
        match self.commands.get() {
            Some(sink) => Ok(sink
                .send_command(&name.registry, &device, data.to_vec(), subfolder.to_owned())
                .await?),
            None => Err(Rejection::failed_precondition(format!(
                "Device `{}` is not connected; it is not subscribed to the commands topic.",
                device.id
            ))
            .into()),
        }
    }
}
