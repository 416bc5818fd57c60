//! MQTT 3.1.1: `codec` (bytes ⇄ packets, no I/O), `topic` (the IoT Core topic grammar),
//! `connection` (one task per connection: handshake, ACL, keep-alive, JWT expiry, QoS 1,
//! config and command delivery) and `listener` (accept loop, TLS, connection cap).

pub(crate) mod bootstrap;
pub mod codec;
pub(crate) mod connection;
mod gateway;
pub(crate) mod listener;
pub(crate) mod session;
pub mod topic;
