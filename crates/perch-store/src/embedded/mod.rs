//! Embedded storage in the data dir: redb for the registry and Pub/Sub resources, a segmented
//! log for messages.

mod log;
mod pubsub;
mod registry;

pub use log::{SEGMENT_MAX_BYTES, SegmentLog};
pub use pubsub::EmbeddedPubsubStore;
pub use registry::EmbeddedRegistryStore;
