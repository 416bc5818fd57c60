//! MQTT 3.1.1: `codec` (bytes ⇄ packets, no I/O), `topic` (the IoT Core topic grammar),
//! `connection` (one task per connection: socket, outbound queue, write deadline, handshake),
//! `session` (ACL, keep-alive, JWT expiry, QoS 1, config and command delivery, gateways),
//! `quota` (pure per-connection rate and subscription limits) and `listener` (accept loop, TLS,
//! connection cap).

pub(crate) mod bootstrap;
pub mod codec;
pub(crate) mod connection;
mod gateway;
pub(crate) mod listener;
mod quota;
pub(crate) mod session;
pub mod topic;
