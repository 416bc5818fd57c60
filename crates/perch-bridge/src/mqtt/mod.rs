//! MQTT 3.1.1: `codec` (bytes ⇄ packets, no I/O), `topic` (the IoT Core topic grammar),
//! `wire` (one socket: buffered reads, queued writes, the write deadline), `connection` (one
//! task per connection: the handshake, then the loop that drives its session), `session` (the
//! session without I/O: ACL, keep-alive, JWT expiry, QoS 1, config and command delivery,
//! gateways), `effects` (what a session asks of the bridge, carried out), `close` (why a session
//! ended), `refusal` (the one table of CONNACK return codes), `gateway` (pure attach rules),
//! `quota` (pure per-connection subscription limits), `bootstrap` (provisioning connections)
//! and `listener` (accept loop, TLS, connection cap).

pub(crate) mod bootstrap;
mod close;
pub mod codec;
pub(crate) mod connection;
mod effects;
mod gateway;
pub(crate) mod listener;
mod quota;
pub(crate) mod refusal;
pub(crate) mod session;
pub mod topic;
pub(crate) mod wire;
