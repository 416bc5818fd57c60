//! The registry service: every DeviceManager operation on domain types, with its validation.
//!
//! The API layers (`api::grpc`, `api::rest`) convert wire types to these calls and back; the
//! rules live here once. This module owns the service, its options, update masks and patches,
//! and the bridges' bookkeeping writes; the operations live with what they change:
//! `registries`, `devices` (and `device_list`, ListDevices' queries), `config_state` (configs,
//! states, commands) and `gateways` (bindings).

mod config_state;
mod device_list;
mod devices;
mod gateways;
mod registries;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Duration;
use perch_core::limits::{LIST_PAGE_SIZE_DEFAULT, LIST_PAGE_SIZE_MAX};
use perch_core::model::{
    Device, DeviceCredential, EventNotificationConfig, GatewayAuthMethod, GatewayType, LogLevel,
};
use perch_core::{Clock, DeviceRef, LocationName, RegistryName, Rejection};
use perch_store::RegistryStore;

use crate::Result;
use crate::events::{CertificateIssuer, CommandSink, EVENT_CHANNEL_CAPACITY, RegistryEvent};

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

/// A bridge's bookkeeping change to one device (activity times, state, acks, last error).
pub type Bookkeeping = Box<dyn FnOnce(&mut Device) + Send>;

/// A bridge's bookkeeping change as a store update: it cannot refuse.
fn bookkeeping(update: Bookkeeping) -> perch_store::DeviceUpdate {
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
        update: Bookkeeping,
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
        updates: Vec<(RegistryName, DeviceRef, Bookkeeping)>,
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
}

/// The fields an update mask names, each parsed by `parse`; an empty mask is refused.
fn mask_fields<F>(
    mask: &[String],
    parse: fn(&str) -> Result<F, Rejection>,
) -> Result<Vec<F>, Rejection> {
    if mask.is_empty() {
        return Err(Rejection::invalid_argument(
            "the update mask is empty; name the fields to change in updateMask",
        ));
    }
    mask.iter().map(|p| parse(p)).collect()
}
