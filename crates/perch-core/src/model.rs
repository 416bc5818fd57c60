//! The registry's data model: what a registry and a device are, independent of any wire format.
//!
//! These are the records the store keeps and the service validates; `perch-registry::api`
//! converts them to and from the `google.cloud.iot.v1` protos. Enums carry the protos' numbers
//! (SPEC.md §1.5) so that conversions are total.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, RegistryId};
use crate::names::RegistryName;

macro_rules! proto_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $num:literal),+ $(,)? } default $default:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
        pub enum $name {
            #[default]
            $default,
            $($variant),+
        }

        impl $name {
            /// The proto enum number.
            pub fn as_i32(self) -> i32 {
                match self {
                    $name::$default => 0,
                    $($name::$variant => $num),+
                }
            }

            /// The value for a proto enum number; `None` for numbers the proto does not define.
            pub fn from_i32(n: i32) -> Option<$name> {
                match n {
                    0 => Some($name::$default),
                    $($num => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

proto_enum!(
    /// Whether a registry accepts MQTT connections; unspecified means enabled.
    MqttState { Enabled = 1, Disabled = 2 } default Unspecified
);
proto_enum!(
    /// Whether a registry accepts HTTP bridge requests; unspecified means enabled.
    HttpState { Enabled = 1, Disabled = 2 } default Unspecified
);
proto_enum!(
    /// Cloud Logging verbosity (kept and returned; Perch logs through `tracing`).
    LogLevel { None = 10, Error = 20, Info = 30, Debug = 40 } default Unspecified
);
proto_enum!(
    /// Whether a device is a gateway; unspecified means non-gateway.
    GatewayType { Gateway = 1, NonGateway = 2 } default Unspecified
);
proto_enum!(
    /// How devices behind a gateway authenticate.
    GatewayAuthMethod {
        AssociationOnly = 1,
        DeviceAuthTokenOnly = 2,
        AssociationAndDeviceAuthToken = 3,
    } default Unspecified
);
proto_enum!(
    /// The format of a device's public key credential; unspecified is invalid.
    PublicKeyFormat { RsaX509Pem = 1, Es256Pem = 2, RsaPem = 3, Es256X509Pem = 4 } default Unspecified
);

impl MqttState {
    pub fn is_enabled(self) -> bool {
        self != MqttState::Disabled
    }
}

impl HttpState {
    pub fn is_enabled(self) -> bool {
        self != HttpState::Disabled
    }
}

impl PublicKeyFormat {
    /// True for the formats that carry an X.509 certificate rather than a bare key.
    pub fn is_x509(self) -> bool {
        matches!(
            self,
            PublicKeyFormat::RsaX509Pem | PublicKeyFormat::Es256X509Pem
        )
    }

    /// True for RSA keys (RS256 tokens), false for P-256 keys (ES256 tokens).
    pub fn is_rsa(self) -> bool {
        matches!(self, PublicKeyFormat::RsaX509Pem | PublicKeyFormat::RsaPem)
    }
}

/// Routes telemetry whose subfolder matches to a Pub/Sub topic; an empty `subfolder_matches`
/// matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EventNotificationConfig {
    pub subfolder_matches: String,
    pub pubsub_topic_name: String,
}

/// A CA certificate of a registry, with the details parsed from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredential {
    pub certificate_pem: String,
    pub details: X509Details,
}

/// What `X509CertificateDetails` reports about a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct X509Details {
    pub issuer: String,
    pub subject: String,
    pub start_time: Option<DateTime<Utc>>,
    pub expiry_time: Option<DateTime<Utc>>,
    pub signature_algorithm: String,
    pub public_key_type: String,
}

/// A device registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub project: String,
    pub location: String,
    pub id: RegistryId,
    /// Ordered: the first match wins; never re-sorted.
    pub event_notification_configs: Vec<EventNotificationConfig>,
    /// Topic for device state reports; empty means none.
    pub state_notification_topic: String,
    pub mqtt_state: MqttState,
    pub http_state: HttpState,
    pub log_level: LogLevel,
    pub credentials: Vec<RegistryCredential>,
}

impl Registry {
    /// A registry with IoT Core's defaults: no notification configs, MQTT and HTTP as the
    /// enums default, no CA credentials.
    pub fn new(
        project: impl Into<String>,
        location: impl Into<String>,
        id: RegistryId,
    ) -> Registry {
        Registry {
            project: project.into(),
            location: location.into(),
            id,
            event_notification_configs: Vec::new(),
            state_notification_topic: String::new(),
            mqtt_state: Default::default(),
            http_state: Default::default(),
            log_level: Default::default(),
            credentials: Vec::new(),
        }
    }

    pub fn name(&self) -> RegistryName {
        RegistryName {
            project: self.project.clone(),
            location: self.location.clone(),
            registry: self.id.clone(),
        }
    }
}

/// A public key a device signs its JWTs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCredential {
    pub format: PublicKeyFormat,
    /// The PEM text exactly as the operator sent it.
    pub key: String,
    /// After this instant the credential is kept but no longer authenticates.
    pub expiration_time: Option<DateTime<Utc>>,
}

impl DeviceCredential {
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expiration_time.is_some_and(|t| t <= now)
    }
}

/// One version of a device's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeviceConfig {
    pub version: i64,
    pub cloud_update_time: Option<DateTime<Utc>>,
    pub device_ack_time: Option<DateTime<Utc>>,
    #[serde(with = "serde_bytes_vec")]
    pub binary_data: Vec<u8>,
}

/// One state report from a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    pub update_time: DateTime<Utc>,
    #[serde(with = "serde_bytes_vec")]
    pub binary_data: Vec<u8>,
}

/// The last error a device's connection hit (`google.rpc.Status` without details).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ErrorStatus {
    pub code: i32,
    pub message: String,
}

/// A device's gateway settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GatewayConfig {
    pub gateway_type: GatewayType,
    pub gateway_auth_method: GatewayAuthMethod,
    pub last_accessed_gateway_id: String,
    pub last_accessed_gateway_time: Option<DateTime<Utc>>,
}

impl GatewayConfig {
    pub fn is_gateway(&self) -> bool {
        self.gateway_type == GatewayType::Gateway
    }
}

/// A device, with its latest config and state (older versions live in the store's history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    pub num_id: u64,
    pub credentials: Vec<DeviceCredential>,
    pub last_heartbeat_time: Option<DateTime<Utc>>,
    pub last_event_time: Option<DateTime<Utc>>,
    pub last_state_time: Option<DateTime<Utc>>,
    pub last_config_ack_time: Option<DateTime<Utc>>,
    pub last_config_send_time: Option<DateTime<Utc>>,
    pub blocked: bool,
    pub last_error_time: Option<DateTime<Utc>>,
    pub last_error_status: Option<ErrorStatus>,
    pub config: DeviceConfig,
    pub state: Option<DeviceState>,
    pub log_level: LogLevel,
    pub metadata: BTreeMap<String, String>,
    pub gateway_config: GatewayConfig,
}

impl Device {
    /// A new device as `CreateDevice` makes it: config version 1, no activity yet.
    pub fn new(id: DeviceId, num_id: u64) -> Device {
        Device {
            id,
            num_id,
            credentials: Vec::new(),
            last_heartbeat_time: None,
            last_event_time: None,
            last_state_time: None,
            last_config_ack_time: None,
            last_config_send_time: None,
            blocked: false,
            last_error_time: None,
            last_error_status: None,
            config: DeviceConfig::default(),
            state: None,
            log_level: LogLevel::Unspecified,
            metadata: BTreeMap::new(),
            gateway_config: GatewayConfig::default(),
        }
    }
}

/// Serializes `Vec<u8>` as a byte string rather than a sequence of integers, which keeps the
/// stored records compact in self-describing formats.
mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}
