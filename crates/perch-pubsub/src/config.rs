//! Pub/Sub resource records as Perch stores them (MessagePack in the `PubsubStore`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A topic. `uid` names its message stream; a topic recreated under the same name gets a new
/// one, so it starts empty, as in Google's service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub name: String,
    pub uid: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Keep messages this long after publish even when acked (enables seek back in time).
    #[serde(default)]
    pub message_retention_seconds: Option<i64>,
}

/// How push subscriptions wrap messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PushWrapper {
    #[default]
    Pubsub,
    NoWrapper {
        write_metadata: bool,
    },
}

/// Push delivery settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushConfig {
    pub endpoint: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub wrapper: PushWrapper,
    #[serde(default)]
    pub oidc_service_account: Option<String>,
    #[serde(default)]
    pub oidc_audience: Option<String>,
}

/// Where messages go after too many delivery attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterPolicy {
    pub topic: String,
    pub max_delivery_attempts: i32,
}

/// Backoff between redeliveries after a nack or an expired deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub minimum_backoff_ms: i64,
    pub maximum_backoff_ms: i64,
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionConfig {
    pub name: String,
    /// The topic's name, or `_deleted-topic_` once it was deleted.
    pub topic: String,
    pub topic_uid: u64,
    /// Names this subscription's progress; a recreated subscription starts afresh.
    pub uid: u64,
    /// The first sequence number this subscription sees (the topic's head when it was made).
    pub start_seq: u64,
    pub push: Option<PushConfig>,
    pub ack_deadline_seconds: i32,
    pub retain_acked_messages: bool,
    pub message_retention_seconds: i64,
    pub enable_message_ordering: bool,
    /// `None`: never expires.
    pub expiration_ttl_seconds: Option<i64>,
    pub filter: String,
    pub dead_letter: Option<DeadLetterPolicy>,
    pub retry: Option<RetryPolicy>,
    pub detached: bool,
    pub enable_exactly_once_delivery: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A snapshot: a subscription's acknowledgement state at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotConfig {
    pub name: String,
    pub topic: String,
    pub topic_uid: u64,
    pub expire_time: DateTime<Utc>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub floor: u64,
    pub acked: Vec<u64>,
}
