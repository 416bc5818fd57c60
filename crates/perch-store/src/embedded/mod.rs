//! Embedded storage in the data dir: redb for the registry and Pub/Sub resources, a segmented
//! log for messages.

mod commit;
mod log;
mod pubsub;
mod records;
mod registry;

pub use commit::GROUP_COMMIT_MAX;
pub use log::{SEGMENT_MAX_BYTES, SEGMENT_MIN_BYTES, SegmentLog};
pub use pubsub::EmbeddedPubsubStore;
pub use registry::EmbeddedRegistryStore;

use std::cell::Cell;
use std::path::Path;

/// Page cache of each redb file. redb's default (1 GiB) would let a registry of a million
/// devices grow the server to a gigabyte; lookups stay fast with far less (docs/benchmarks.md).
pub const REDB_CACHE_BYTES: usize = 128 * 1024 * 1024;

/// Opens (or creates) a redb file with Perch's settings. After an unclean shutdown redb checks
/// the whole file before it opens; that takes seconds at a million devices, so progress is
/// logged instead of leaving the operator with a silent server.
pub(crate) fn open_database(path: &Path) -> Result<redb::Database, redb::DatabaseError> {
    let file = path.display().to_string();
    let logged = Cell::new(0u32);
    redb::Builder::new()
        .set_cache_size(REDB_CACHE_BYTES)
        .set_repair_callback(move |session| {
            let tenth = (session.progress() * 10.0) as u32;
            if tenth >= logged.get() {
                tracing::warn!(
                    file = %file,
                    progress_percent = tenth * 10,
                    "checking a store after an unclean shutdown; the server starts when this is done"
                );
                logged.set(tenth + 1);
            }
        })
        .create(path)
}
