//! Perch's Pub/Sub: topics, subscriptions and snapshots with Google Pub/Sub v1 semantics —
//! durable publish, pull and streaming pull with leases and ack deadlines, redelivery with
//! retry backoff, dead letters, ordering keys, filters, seek, push — served over gRPC
//! (`google.pubsub.v1`) and REST.
//!
//! Owns delivery semantics (`subscription`: one state machine per subscription) and the
//! resource rules (`service`). Does not own storage: messages live in a `MessageLog`, resources
//! and ack progress in a `PubsubStore` (`perch-store`). Never binds a socket.
#![deny(clippy::unwrap_used)]

pub mod api;
mod config;
mod error;
pub mod filter;
pub mod names;
mod push;
pub mod service;
pub mod subscription;

pub use config::{
    DeadLetterPolicy, PushConfig, RetryPolicy, SnapshotConfig, SubscriptionConfig, TopicConfig,
};
pub use error::{Error, Result};
/// What a publisher hands over: the bridges build these without depending on the store.
pub use perch_store::log::NewMessage;
pub use service::{Published, PubsubOptions, PubsubService, Stream};
