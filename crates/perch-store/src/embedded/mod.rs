//! Embedded storage in the data dir: redb for the registry.

mod registry;

pub use registry::EmbeddedRegistryStore;
