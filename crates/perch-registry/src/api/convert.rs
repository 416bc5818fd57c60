//! Conversions between the registry's domain types and the `google.cloud.iot.v1` protos, and
//! read masks on devices. Both API layers use these, so gRPC and REST answer alike.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use perch_core::model::{
    Device, DeviceConfig, DeviceCredential, DeviceState, EventNotificationConfig,
    GatewayAuthMethod, GatewayConfig, GatewayType, HttpState, LogLevel, MqttState, PublicKeyFormat,
    Registry, RegistryCredential,
};
use perch_core::{RegistryId, RegistryName, Rejection};
use perch_proto::google::rpc;
use perch_proto::iot as pb;

use crate::{DevicePatch, RegistryPatch};

fn ts(t: Option<DateTime<Utc>>) -> Option<perch_proto::timestamp::Timestamp> {
    t.map(Into::into)
}

fn from_ts(
    field: &str,
    t: Option<perch_proto::timestamp::Timestamp>,
) -> Result<Option<DateTime<Utc>>, Rejection> {
    t.map(|t| {
        DateTime::<Utc>::try_from(t)
            .map_err(|_| Rejection::invalid_argument(format!("'{field}' is not a valid timestamp")))
    })
    .transpose()
}

fn enum_value<T>(field: &str, n: i32, parse: impl Fn(i32) -> Option<T>) -> Result<T, Rejection> {
    parse(n).ok_or_else(|| Rejection::invalid_argument(format!("'{field}' has no value {n}")))
}

// ----- registries -----

pub(crate) fn registry_to_proto(r: &Registry) -> pb::DeviceRegistry {
    pb::DeviceRegistry {
        id: r.id.to_string(),
        name: r.name().to_string(),
        event_notification_configs: r
            .event_notification_configs
            .iter()
            .map(|c| pb::EventNotificationConfig {
                subfolder_matches: c.subfolder_matches.clone(),
                pubsub_topic_name: c.pubsub_topic_name.clone(),
            })
            .collect(),
        state_notification_config: Some(pb::StateNotificationConfig {
            pubsub_topic_name: r.state_notification_topic.clone(),
        }),
        mqtt_config: Some(pb::MqttConfig {
            mqtt_enabled_state: match r.mqtt_state {
                MqttState::Disabled => MqttState::Disabled,
                _ => MqttState::Enabled,
            }
            .as_i32(),
        }),
        http_config: Some(pb::HttpConfig {
            http_enabled_state: match r.http_state {
                HttpState::Disabled => HttpState::Disabled,
                _ => HttpState::Enabled,
            }
            .as_i32(),
        }),
        log_level: r.log_level.as_i32(),
        credentials: r
            .credentials
            .iter()
            .map(|c| pb::RegistryCredential {
                credential: Some(pb::registry_credential::Credential::PublicKeyCertificate(
                    pb::PublicKeyCertificate {
                        format: pb::PublicKeyCertificateFormat::X509CertificatePem as i32,
                        certificate: c.certificate_pem.clone(),
                        x509_details: Some(pb::X509CertificateDetails {
                            issuer: c.details.issuer.clone(),
                            subject: c.details.subject.clone(),
                            start_time: ts(c.details.start_time),
                            expiry_time: ts(c.details.expiry_time),
                            signature_algorithm: c.details.signature_algorithm.clone(),
                            public_key_type: c.details.public_key_type.clone(),
                        }),
                    },
                )),
            })
            .collect(),
    }
}

fn registry_patch_from_proto(r: &pb::DeviceRegistry) -> Result<RegistryPatch, Rejection> {
    let credentials = r
        .credentials
        .iter()
        .enumerate()
        .map(|(i, c)| match &c.credential {
            Some(pb::registry_credential::Credential::PublicKeyCertificate(cert)) => {
                Ok(cert.certificate.clone())
            }
            None => Err(Rejection::invalid_argument(format!(
                "credentials[{i}] has no publicKeyCertificate"
            ))),
        })
        .collect::<Result<_, _>>()?;
    Ok(RegistryPatch {
        event_notification_configs: r
            .event_notification_configs
            .iter()
            .map(|c| EventNotificationConfig {
                subfolder_matches: c.subfolder_matches.clone(),
                pubsub_topic_name: c.pubsub_topic_name.clone(),
            })
            .collect(),
        state_notification_topic: r
            .state_notification_config
            .as_ref()
            .map(|c| c.pubsub_topic_name.clone())
            .unwrap_or_default(),
        mqtt_state: enum_value(
            "mqttConfig.mqttEnabledState",
            r.mqtt_config
                .map(|c| c.mqtt_enabled_state)
                .unwrap_or_default(),
            MqttState::from_i32,
        )?,
        http_state: enum_value(
            "httpConfig.httpEnabledState",
            r.http_config
                .map(|c| c.http_enabled_state)
                .unwrap_or_default(),
            HttpState::from_i32,
        )?,
        credentials,
        log_level: enum_value("logLevel", r.log_level, LogLevel::from_i32)?,
    })
}

/// A registry to create; project and location come from the parent.
pub(crate) fn new_registry_from_proto(r: &pb::DeviceRegistry) -> Result<Registry, Rejection> {
    if !r.name.is_empty() {
        return Err(Rejection::invalid_argument(
            "'device_registry.name' must be empty on create; the server names the registry",
        ));
    }
    let id: RegistryId =
        r.id.parse()
            .map_err(|e: perch_core::IdError| Rejection::invalid_argument(e.to_string()))?;
    let patch = registry_patch_from_proto(r)?;
    Ok(Registry {
        project: String::new(),
        location: String::new(),
        id,
        event_notification_configs: patch.event_notification_configs,
        state_notification_topic: patch.state_notification_topic,
        mqtt_state: patch.mqtt_state,
        http_state: patch.http_state,
        log_level: patch.log_level,
        credentials: patch
            .credentials
            .into_iter()
            .map(|pem| RegistryCredential {
                certificate_pem: pem,
                details: Default::default(),
            })
            .collect(),
    })
}

pub(crate) fn registry_patch(r: &pb::DeviceRegistry) -> Result<RegistryPatch, Rejection> {
    registry_patch_from_proto(r)
}

// ----- devices -----

fn config_to_proto(c: &DeviceConfig) -> pb::DeviceConfig {
    pb::DeviceConfig {
        version: c.version,
        cloud_update_time: ts(c.cloud_update_time),
        device_ack_time: ts(c.device_ack_time),
        binary_data: c.binary_data.clone(),
    }
}

pub(crate) fn configs_to_proto(configs: &[DeviceConfig]) -> Vec<pb::DeviceConfig> {
    configs.iter().map(config_to_proto).collect()
}

pub(crate) fn state_to_proto(s: &DeviceState) -> pb::DeviceState {
    pb::DeviceState {
        update_time: ts(Some(s.update_time)),
        binary_data: s.binary_data.clone(),
    }
}

pub(crate) fn config_proto(c: &DeviceConfig) -> pb::DeviceConfig {
    config_to_proto(c)
}

pub(crate) fn device_to_proto(registry: &RegistryName, d: &Device) -> pb::Device {
    pb::Device {
        id: d.id.to_string(),
        name: registry.device_name(d.num_id),
        num_id: d.num_id,
        credentials: d
            .credentials
            .iter()
            .map(|c| pb::DeviceCredential {
                expiration_time: ts(c.expiration_time),
                credential: Some(pb::device_credential::Credential::PublicKey(
                    pb::PublicKeyCredential {
                        format: c.format.as_i32(),
                        key: c.key.clone(),
                    },
                )),
            })
            .collect(),
        last_heartbeat_time: ts(d.last_heartbeat_time),
        last_event_time: ts(d.last_event_time),
        last_state_time: ts(d.last_state_time),
        last_config_ack_time: ts(d.last_config_ack_time),
        last_config_send_time: ts(d.last_config_send_time),
        blocked: d.blocked,
        last_error_time: ts(d.last_error_time),
        last_error_status: d.last_error_status.as_ref().map(|s| rpc::Status {
            code: s.code,
            message: s.message.clone(),
            details: vec![],
        }),
        config: Some(config_to_proto(&d.config)),
        state: d.state.as_ref().map(state_to_proto),
        log_level: d.log_level.as_i32(),
        metadata: d
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        gateway_config: Some(pb::GatewayConfig {
            gateway_type: d.gateway_config.gateway_type.as_i32(),
            gateway_auth_method: d.gateway_config.gateway_auth_method.as_i32(),
            last_accessed_gateway_id: d.gateway_config.last_accessed_gateway_id.clone(),
            last_accessed_gateway_time: ts(d.gateway_config.last_accessed_gateway_time),
        }),
    }
}

fn credentials_from_proto(
    creds: &[pb::DeviceCredential],
) -> Result<Vec<DeviceCredential>, Rejection> {
    creds
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let Some(pb::device_credential::Credential::PublicKey(key)) = &c.credential else {
                return Err(Rejection::invalid_argument(format!(
                    "credentials[{i}] has no publicKey"
                )));
            };
            Ok(DeviceCredential {
                format: enum_value(
                    &format!("credentials[{i}].publicKey.format"),
                    key.format,
                    PublicKeyFormat::from_i32,
                )?,
                key: key.key.clone(),
                expiration_time: from_ts("expirationTime", c.expiration_time)?
                    // The GAPIC client round-trips the epoch for "no expiry" (SPEC.md §1.3).
                    .filter(|t| t.timestamp() != 0),
            })
        })
        .collect()
}

fn gateway_auth_method(d: &pb::Device) -> Result<GatewayAuthMethod, Rejection> {
    enum_value(
        "gatewayConfig.gatewayAuthMethod",
        d.gateway_config
            .as_ref()
            .map(|g| g.gateway_auth_method)
            .unwrap_or_default(),
        GatewayAuthMethod::from_i32,
    )
}

/// A device to create from its proto; output-only fields are ignored, `name` must be empty.
pub(crate) fn new_device_from_proto(d: &pb::Device) -> Result<Device, Rejection> {
    if !d.name.is_empty() {
        return Err(Rejection::invalid_argument(
            "'device.name' must be empty on create; the server names the device",
        ));
    }
    let id =
        d.id.parse()
            .map_err(|e: perch_core::IdError| Rejection::invalid_argument(e.to_string()))?;
    let mut device = Device::new(id, 0);
    device.credentials = credentials_from_proto(&d.credentials)?;
    device.blocked = d.blocked;
    device.log_level = enum_value("logLevel", d.log_level, LogLevel::from_i32)?;
    device.metadata = d
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<BTreeMap<_, _>>();
    if let Some(config) = &d.config {
        device.config.version = config.version;
        device.config.binary_data = config.binary_data.clone();
    }
    device.gateway_config = GatewayConfig {
        gateway_type: enum_value(
            "gatewayConfig.gatewayType",
            d.gateway_config
                .as_ref()
                .map(|g| g.gateway_type)
                .unwrap_or_default(),
            GatewayType::from_i32,
        )?,
        gateway_auth_method: gateway_auth_method(d)?,
        ..Default::default()
    };
    Ok(device)
}

/// The mutable fields of a device from a PATCH body; fields outside the mask are not looked at
/// by the service, so we convert leniently what cannot fail.
pub(crate) fn device_patch(d: &pb::Device, mask: &[String]) -> Result<DevicePatch, Rejection> {
    let wants = |f: &str| mask.iter().any(|p| p == f);
    Ok(DevicePatch {
        credentials: if wants("credentials") {
            credentials_from_proto(&d.credentials)?
        } else {
            Vec::new()
        },
        blocked: d.blocked,
        metadata: d
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        log_level: if wants("log_level") {
            enum_value("logLevel", d.log_level, LogLevel::from_i32)?
        } else {
            LogLevel::Unspecified
        },
        gateway_auth_method: if wants("gateway_config.gateway_auth_method") {
            gateway_auth_method(d)?
        } else {
            GatewayAuthMethod::Unspecified
        },
    })
}

/// Device fields a read mask may name (top level).
const DEVICE_FIELDS: &[&str] = &[
    "id",
    "name",
    "num_id",
    "credentials",
    "last_heartbeat_time",
    "last_event_time",
    "last_state_time",
    "last_config_ack_time",
    "last_config_send_time",
    "blocked",
    "last_error_time",
    "last_error_status",
    "config",
    "state",
    "log_level",
    "metadata",
    "gateway_config",
];

/// Checks read-mask paths against the Device message.
pub(crate) fn check_device_read_mask(paths: &[String]) -> Result<(), Rejection> {
    for path in paths {
        if !DEVICE_FIELDS.contains(&crate::mask::top_level(path)) {
            return Err(Rejection::invalid_argument(format!(
                "the field mask path '{path}' is not a field of Device"
            )));
        }
    }
    Ok(())
}

/// Keeps only the masked fields of a device (plus `keep_always`, e.g. id/name/numId in lists).
pub(crate) fn apply_device_read_mask(d: &mut pb::Device, paths: &[String], keep_always: &[&str]) {
    let keep =
        |f: &str| keep_always.contains(&f) || paths.iter().any(|p| crate::mask::top_level(p) == f);
    if !keep("id") {
        d.id.clear();
    }
    if !keep("name") {
        d.name.clear();
    }
    if !keep("num_id") {
        d.num_id = 0;
    }
    if !keep("credentials") {
        d.credentials.clear();
    }
    if !keep("last_heartbeat_time") {
        d.last_heartbeat_time = None;
    }
    if !keep("last_event_time") {
        d.last_event_time = None;
    }
    if !keep("last_state_time") {
        d.last_state_time = None;
    }
    if !keep("last_config_ack_time") {
        d.last_config_ack_time = None;
    }
    if !keep("last_config_send_time") {
        d.last_config_send_time = None;
    }
    if !keep("blocked") {
        d.blocked = false;
    }
    if !keep("last_error_time") {
        d.last_error_time = None;
    }
    if !keep("last_error_status") {
        d.last_error_status = None;
    }
    if !keep("config") {
        d.config = None;
    }
    if !keep("state") {
        d.state = None;
    }
    if !keep("log_level") {
        d.log_level = 0;
    }
    if !keep("metadata") {
        d.metadata.clear();
    }
    if !keep("gateway_config") {
        d.gateway_config = None;
    }
}

/// Runs a REST request body through what the create and patch handlers do with it: the proto3
/// JSON parse, then the domain conversion with its key and certificate checks. For the fuzz
/// targets (`fuzz/fuzz_targets/rest_json.rs`); the handlers themselves call the functions above.
#[doc(hidden)]
pub fn check_request_body(body: &[u8]) {
    if let Ok(d) = serde_json::from_slice::<pb::Device>(body) {
        let _ = new_device_from_proto(&d);
        let mask = [
            "credentials",
            "blocked",
            "metadata",
            "log_level",
            "gateway_config",
        ]
        .map(String::from);
        let _ = device_patch(&d, &mask);
    }
    if let Ok(r) = serde_json::from_slice::<pb::DeviceRegistry>(body) {
        let _ = new_registry_from_proto(&r);
        let _ = registry_patch(&r);
    }
}
