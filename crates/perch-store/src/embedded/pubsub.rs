//! `PubsubStore` on redb (`pubsub.redb` in the data dir).
//!
//! Tables: `resources` (kind/name → record bytes), `ack_floor` (subscription uid → floor),
//! `acked` ((subscription uid, seq) → ()) for acknowledgements above the floor.

use std::path::Path;

use redb::{ReadableDatabase, TableDefinition};

use super::backend;
use super::commit::Committer;
use super::records;
use crate::Result;
use crate::pubsub::{AckProgress, PubsubStore, ResourceKind};

const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
const ACK_FLOOR: TableDefinition<u64, u64> = TableDefinition::new("ack_floor");
const ACKED: TableDefinition<(u64, u64), ()> = TableDefinition::new("acked");

fn key(kind: ResourceKind, name: &str) -> String {
    format!("{}\0{name}", kind.as_str())
}

/// Pub/Sub resources in a redb file.
#[derive(Debug, Clone)]
pub struct EmbeddedPubsubStore {
    committer: Committer,
}

impl EmbeddedPubsubStore {
    pub fn open(path: &Path) -> Result<EmbeddedPubsubStore> {
        let committer = Committer::open(path, "perch-pubsub-commit", |txn| {
            txn.open_table(RESOURCES).map_err(backend)?;
            txn.open_table(ACK_FLOOR).map_err(backend)?;
            txn.open_table(ACKED).map_err(backend)?;
            Ok(())
        })?;
        Ok(EmbeddedPubsubStore { committer })
    }
}

#[async_trait::async_trait]
impl PubsubStore for EmbeddedPubsubStore {
    async fn put_resource(
        &self,
        kind: ResourceKind,
        name: &str,
        value: Vec<u8>,
        create_only: bool,
    ) -> Result<()> {
        let (k, id) = (
            key(kind, name),
            name.rsplit('/').next().unwrap_or(name).to_owned(),
        );
        self.committer
            .write(move |txn| records::put(txn, RESOURCES, &k, &value, create_only, &id))
            .await
    }

    async fn get_resource(&self, kind: ResourceKind, name: &str) -> Result<Option<Vec<u8>>> {
        let k = key(kind, name);
        self.committer
            .read(move |db| records::get(db, RESOURCES, &k))
            .await
    }

    async fn list_resources(&self, kind: ResourceKind) -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = format!("{}\0", kind.as_str());
        self.committer
            .read(move |db| {
                let txn = db.begin_read().map_err(backend)?;
                let t = txn.open_table(RESOURCES).map_err(backend)?;
                let end = format!("{}\u{1}", kind.as_str());
                let mut out = Vec::new();
                for entry in t.range(prefix.as_str()..end.as_str()).map_err(backend)? {
                    let (k, v) = entry.map_err(backend)?;
                    out.push((k.value()[prefix.len()..].to_owned(), v.value().to_vec()));
                }
                Ok(out)
            })
            .await
    }

    async fn delete_resource(&self, kind: ResourceKind, name: &str) -> Result<bool> {
        let k = key(kind, name);
        self.committer
            .write(move |txn| records::delete(txn, RESOURCES, &k))
            .await
    }

    async fn load_progress(&self, subscription: u64) -> Result<AckProgress> {
        self.committer
            .read(move |db| {
                let txn = db.begin_read().map_err(backend)?;
                let floor = txn
                    .open_table(ACK_FLOOR)
                    .map_err(backend)?
                    .get(subscription)
                    .map_err(backend)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                let acked = txn
                    .open_table(ACKED)
                    .map_err(backend)?
                    .range((subscription, 0)..=(subscription, u64::MAX))
                    .map_err(backend)?
                    .map(|e| e.map(|(k, _)| k.value().1))
                    .collect::<Result<Vec<u64>, _>>()
                    .map_err(backend)?;
                Ok(AckProgress { floor, acked })
            })
            .await
    }

    async fn save_progress(&self, updates: Vec<(u64, AckProgress)>) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        self.committer
            .write(move |txn| {
                {
                    let mut floors = txn.open_table(ACK_FLOOR).map_err(backend)?;
                    let mut acked = txn.open_table(ACKED).map_err(backend)?;
                    for (sub, progress) in updates {
                        floors.insert(sub, progress.floor).map_err(backend)?;
                        acked
                            .retain_in((sub, 0)..=(sub, u64::MAX), |_, _| false)
                            .map_err(backend)?;
                        for seq in progress.acked {
                            acked.insert((sub, seq), ()).map_err(backend)?;
                        }
                    }
                }
                Ok(())
            })
            .await
    }

    async fn delete_progress(&self, subscription: u64) -> Result<()> {
        self.committer
            .write(move |txn| {
                txn.open_table(ACK_FLOOR)
                    .map_err(backend)?
                    .remove(subscription)
                    .map_err(backend)?;
                txn.open_table(ACKED)
                    .map_err(backend)?
                    .retain_in((subscription, 0)..=(subscription, u64::MAX), |_, _| false)
                    .map_err(backend)?;
                Ok(())
            })
            .await
    }
}
