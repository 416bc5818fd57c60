//! Embedded storage in the data dir: redb for the registry and Pub/Sub resources, a segmented
//! log for messages. Every file it creates is private to the server's user (`DATA_FILE_MODE`),
//! every directory too (`DATA_DIR_MODE`).

mod commit;
mod group_commit;
mod log;
mod pubsub;
mod records;
mod registry;

pub use commit::{GROUP_COMMIT_MAX, REOPEN_RETRY};
pub use log::{SEGMENT_MAX_BYTES, SEGMENT_MIN_BYTES, SegmentLog};
pub use pubsub::EmbeddedPubsubStore;
pub use registry::EmbeddedRegistryStore;

use std::cell::Cell;
use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of every file in the data dir: read and write for the server's user only (device keys,
/// telemetry and messages are nobody else's business).
pub const DATA_FILE_MODE: u32 = 0o600;
/// Mode of every directory in the data dir: the server's user only.
pub const DATA_DIR_MODE: u32 = 0o700;

/// Creates a directory and any missing parents with `DATA_DIR_MODE` (existing ones are left as
/// they are; the data dir is tightened at start-up).
pub fn create_private_dir_all(path: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DATA_DIR_MODE)
        .create(path)
}

/// Opens a data file for reading and writing, creating it with `DATA_FILE_MODE` if missing.
pub fn open_private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(DATA_FILE_MODE)
        .open(path)
}

/// A storage engine failure, for the log (the client sees `INTERNAL`).
pub(crate) fn backend(e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Backend(e.to_string())
}

/// Page cache of each redb file. redb's default (1 GiB) would let a registry of a million
/// devices grow the server to a gigabyte; lookups stay fast with far less (docs/benchmarks.md).
pub const REDB_CACHE_BYTES: usize = 128 * 1024 * 1024;

/// Opens (or creates) a redb file with Perch's settings. After an unclean shutdown redb checks
/// the whole file before it opens; that takes seconds at a million devices, so progress is
/// logged instead of leaving the operator with a silent server.
pub(crate) fn open_database(path: &Path) -> Result<redb::Database, redb::DatabaseError> {
    // redb creates missing files with the process umask (0644); create it private first (redb
    // initialises an empty file).
    open_private_file(path).map_err(|e| redb::DatabaseError::Storage(redb::StorageError::Io(e)))?;
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
                    "checking a store that was not closed cleanly (a crash, or an I/O failure); it serves again when this is done"
                );
                logged.set(tenth + 1);
            }
        })
        .create(path)
}
