//! The Pub/Sub resource store: topic, subscription and snapshot records (opaque bytes the
//! Pub/Sub engine encodes), and each subscription's acknowledgement progress.

use crate::Result;

/// Kinds of Pub/Sub resource records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Topic,
    Subscription,
    Snapshot,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Topic => "topic",
            ResourceKind::Subscription => "subscription",
            ResourceKind::Snapshot => "snapshot",
        }
    }
}

/// A subscription's acknowledgement progress: every sequence number below `floor` is acked,
/// and so is each one in `acked` (all `>= floor`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckProgress {
    pub floor: u64,
    pub acked: Vec<u64>,
}

/// Durable Pub/Sub resources and subscription progress.
#[async_trait::async_trait]
pub trait PubsubStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a record; with `create_only`, an existing name is `ALREADY_EXISTS`.
    async fn put_resource(
        &self,
        kind: ResourceKind,
        name: &str,
        value: Vec<u8>,
        create_only: bool,
    ) -> Result<()>;
    async fn get_resource(&self, kind: ResourceKind, name: &str) -> Result<Option<Vec<u8>>>;
    /// Every record of a kind (loaded once at start-up; Pub/Sub resources number thousands at most).
    async fn list_resources(&self, kind: ResourceKind) -> Result<Vec<(String, Vec<u8>)>>;
    /// Deletes a record; false if it did not exist.
    async fn delete_resource(&self, kind: ResourceKind, name: &str) -> Result<bool>;
    /// The stored progress of a subscription (default when none).
    async fn load_progress(&self, subscription: u64) -> Result<AckProgress>;
    /// Replaces the progress of several subscriptions in one durable commit.
    async fn save_progress(&self, updates: Vec<(u64, AckProgress)>) -> Result<()>;
    /// Forgets a subscription's progress.
    async fn delete_progress(&self, subscription: u64) -> Result<()>;
}
