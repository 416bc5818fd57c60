//! MQTT 3.1.1: `codec` (bytes ⇄ packets, no I/O), `topic` (the IoT Core topic grammar),
//! `close` (why a session ended), `connection` (one task per connection: socket, outbound queue, write deadline, handshake),
//! `session` (ACL, keep-alive, JWT expiry, QoS 1, config and command delivery, gateways),
//! `quota` (pure per-connection rate and subscription limits), `refusal` (the one table of
//! CONNACK return codes) and `listener` (accept loop, TLS,
//! connection cap).

pub(crate) mod bootstrap;
mod close;
pub mod codec;
pub(crate) mod connection;
mod gateway;
pub(crate) mod listener;
mod quota;
pub(crate) mod refusal;
pub(crate) mod session;
pub mod topic;
