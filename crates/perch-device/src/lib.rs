//! Device side of Perch: what a Raspberry Pi links to talk to a Perch (or Cloud IoT Core-shaped)
//! MQTT bridge.
//!
//! Owns the device's MQTT 3.1.1/TLS connection ([`client`]), its JWT ([`jwt`]), the TLS trust
//! store built from one CA file ([`tls`]) and the reconnect policy ([`backoff`]), and the one
//! exchange a device makes before it has an identity: asking for one with a bootstrap credential
//! ([`bootstrap`], docs/provisioning.md).
//! Does not own what is published or any persistence: `perch-agent` keeps its on-disk queue and
//! retries a publish until [`DeviceClient::publish`] reports the PUBACK.
//! Invariant: links no server code and no aws-lc; cryptography is `ring` only.
#![deny(clippy::unwrap_used)]

pub mod backoff;
pub mod bootstrap;
pub mod client;
pub mod error;
pub mod jwt;
pub mod tls;

pub use client::{DeviceClient, DeviceEvent, DeviceOptions, DeviceTopics, PendingPubAck, connect};
pub use error::{DeviceError, Result};
pub use jwt::{Algorithm, GeneratedKey, SigningKey};
