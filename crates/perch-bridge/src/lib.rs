//! Perch's device bridges: MQTT 3.1.1 over TLS and the HTTP device API, speaking Cloud IoT
//! Core's wire protocol, and the router that stamps trusted identity attributes on every
//! message before it reaches Pub/Sub.
//!
//! This crate is the trust boundary: it alone parses bytes from devices. `mqtt::codec` is pure
//! (bytes ⇄ packets); `mqtt::connection` owns one socket each; `sessions` is the live map
//! device → connection that revocations, configs and commands go through.
#![deny(clippy::unwrap_used)]

mod activity;
mod bridge;
pub mod http;
mod ingest;
pub mod listen;
pub mod mqtt;
mod rate;
pub mod router;
mod sessions;
mod state;

pub use bridge::{
    Bridge, BridgeOptions, MQTT_COMMAND_FILTERS_MAX, MQTT_MAX_CONNECTIONS,
    MQTT_MAX_CONNECTIONS_PER_SOURCE, MQTT_OUTBOUND_QUEUE_MAX_BYTES, MQTT_SUBSCRIBE_BURST,
    MQTT_SUBSCRIBES_PER_SECOND, MQTT_WRITE_TIMEOUT,
};
pub use rate::HTTP_RATE_ENTRIES_PRUNE_AT;
