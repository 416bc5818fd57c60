//! The message log trait: durable, append-only streams of messages, one stream per topic
//! incarnation, addressed by a per-stream sequence number that starts at 1.
//!
//! The embedded implementation is `embedded::SegmentLog`; NATS JetStream (a stream per topic,
//! sequence = JetStream stream sequence) will implement the same trait.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::Result;

/// A message to append.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewMessage {
    pub data: Bytes,
    pub attributes: BTreeMap<String, String>,
    pub ordering_key: String,
}

impl NewMessage {
    /// Bytes this message occupies, as flow control counts them.
    pub fn size(&self) -> usize {
        self.data.len()
            + self.ordering_key.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// A message as stored: its sequence number and publish time, assigned by the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub publish_time: DateTime<Utc>,
    pub message: NewMessage,
}

/// Where an appended message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub publish_time: DateTime<Utc>,
}

/// Durable append-only message streams.
///
/// Invariants: `append` returns only after the messages are on disk (fsync; many appends share
/// one); sequence numbers are dense and increasing per stream; `truncate_before` drops only
/// whole storage units, so reads of retained sequence numbers never miss.
#[async_trait::async_trait]
pub trait MessageLog: Send + Sync + std::fmt::Debug + 'static {
    /// Creates an empty stream; creating an existing one is a no-op.
    async fn create_stream(&self, stream: u64) -> Result<()>;
    /// Deletes a stream and its messages.
    async fn delete_stream(&self, stream: u64) -> Result<()>;
    /// Appends messages durably; returns their sequence numbers and publish times in order.
    async fn append(&self, stream: u64, messages: Vec<NewMessage>) -> Result<Vec<Appended>>;
    /// Up to `max` messages with `seq >= from`, in order, stopping early once `max_bytes` is
    /// reached (at least one message is returned when any exists).
    fn read(
        &self,
        stream: u64,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>>;
    /// One message, if it is retained.
    fn read_one(&self, stream: u64, seq: u64) -> Result<Option<StoredMessage>>;
    /// The sequence number the next append will get (1 for an empty stream).
    fn next_seq(&self, stream: u64) -> Result<u64>;
    /// The oldest retained sequence number (`next_seq` when nothing is retained).
    fn first_seq(&self, stream: u64) -> Result<u64>;
    /// The first retained sequence number published at or after `time` (`next_seq` if none).
    fn seq_at_time(&self, stream: u64, time: DateTime<Utc>) -> Result<u64>;
    /// A receiver that sees `next_seq` after every append.
    fn watch(&self, stream: u64) -> Result<watch::Receiver<u64>>;
    /// Drops stored messages with `seq < before`, in whole storage units.
    async fn truncate_before(&self, stream: u64, before: u64) -> Result<()>;
    /// Streams that exist (for start-up reconciliation).
    fn streams(&self) -> Vec<u64>;
}
