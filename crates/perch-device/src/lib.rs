//! Device side of Perch: what a Raspberry Pi links to talk to a Perch (or Cloud IoT Core-shaped)
//! MQTT bridge.
//!
//! Owns the device's MQTT 3.1.1/TLS connection ([`client`]), its JWT ([`jwt`]), the TLS trust
//! store built from one CA file ([`tls`]) and the reconnect policy ([`backoff`]), and the one
//! exchange a device makes before it has an identity: asking for one with a bootstrap credential
//! ([`bootstrap`], docs/provisioning.md).
//! Does not own what is published or any persistence: `perch-agent` keeps its on-disk queue and
//! retries a publish until [`DeviceClient::publish`] reports the PUBACK.
//! Invariant: links no server code and no aws-lc; cryptography is `ring` only. Without the default
//! `client` feature it is only [`jwt`]: the server's provisioning signs and generates keys with it
//! without linking an MQTT client.
#![deny(clippy::unwrap_used)]

#[cfg(feature = "client")]
pub mod backoff;
#[cfg(feature = "client")]
pub mod bootstrap;
#[cfg(feature = "client")]
pub mod client;
pub mod error;
pub mod jwt;
#[cfg(feature = "client")]
pub mod tls;

#[cfg(feature = "client")]
pub use client::{DeviceClient, DeviceEvent, DeviceOptions, DeviceTopics, PendingPubAck, connect};
pub use error::{DeviceError, Result};
pub use jwt::{Algorithm, GeneratedKey, SigningKey};
