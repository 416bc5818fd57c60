//! Snapshots (create, get, list, update, delete) and seek, to a time or to a snapshot.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use perch_store::pubsub::ResourceKind;

use super::{PubsubService, SNAPSHOT_MAX_AGE, check_mask, page, poisoned};
use crate::Result;
use crate::config::SnapshotConfig;
use crate::error::{failed_precondition, invalid, not_found};
use crate::names::{self, DELETED_TOPIC};

impl PubsubService {
    pub async fn seek_to_time(&self, name: &str, time: DateTime<Utc>) -> Result<()> {
        let sub = self.active_subscription(name)?;
        let topic_uid = sub.config.read().map_err(poisoned)?.topic_uid;
        let seq = self
            .inner
            .log
            .seq_at_time(topic_uid, time)?
            .max(self.inner.log.first_seq(topic_uid)?);
        sub.state.lock().map_err(poisoned)?.reset(seq, []);
        sub.changed.notify_waiters();
        Ok(())
    }

    pub async fn seek_to_snapshot(&self, name: &str, snapshot: &str) -> Result<()> {
        names::snapshot(snapshot)?;
        let sub = self.active_subscription(name)?;
        let snap = self
            .inner
            .snapshots
            .read()
            .map_err(poisoned)?
            .get(snapshot)
            .cloned()
            .ok_or_else(|| not_found(snapshot))?;
        let topic_uid = sub.config.read().map_err(poisoned)?.topic_uid;
        if snap.topic_uid != topic_uid {
            return Err(invalid(format!(
                "snapshot `{snapshot}` belongs to topic `{}`, not to this subscription's topic",
                snap.topic
            )));
        }
        let first = self.inner.log.first_seq(topic_uid)?;
        sub.state
            .lock()
            .map_err(poisoned)?
            .reset(snap.floor.max(first), snap.acked);
        sub.changed.notify_waiters();
        Ok(())
    }

    pub async fn create_snapshot(
        &self,
        name: &str,
        subscription: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<SnapshotConfig> {
        names::snapshot(name)?;
        let sub = self.active_subscription(subscription)?;
        let c = sub.config.read().map_err(poisoned)?.clone();
        if c.topic == DELETED_TOPIC {
            return Err(failed_precondition(format!(
                "the topic of subscription `{subscription}` was deleted"
            )));
        }
        let progress = sub.state.lock().map_err(poisoned)?.progress();
        let snap = SnapshotConfig {
            name: name.to_owned(),
            topic: c.topic.clone(),
            topic_uid: c.topic_uid,
            expire_time: self.now() + SNAPSHOT_MAX_AGE,
            labels,
            floor: progress.floor,
            acked: progress.acked,
        };
        self.put_resource(
            ResourceKind::Snapshot,
            &self.inner.snapshots,
            name,
            &snap,
            true,
        )
        .await?;
        Ok(snap)
    }

    pub fn get_snapshot(&self, name: &str) -> Result<SnapshotConfig> {
        names::snapshot(name)?;
        self.inner
            .snapshots
            .read()
            .map_err(poisoned)?
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    pub fn list_snapshots(
        &self,
        project: &str,
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<SnapshotConfig>, String)> {
        page(
            &*self.inner.snapshots.read().map_err(poisoned)?,
            &format!("projects/{project}/snapshots/"),
            page_size,
            token,
            |_| true,
        )
    }

    pub async fn update_snapshot(
        &self,
        update: SnapshotConfig,
        mask: &[String],
    ) -> Result<SnapshotConfig> {
        let mut snap = self.get_snapshot(&update.name)?;
        check_mask(mask)?;
        for path in mask {
            match path.as_str() {
                "labels" => snap.labels = update.labels.clone(),
                "expire_time" => snap.expire_time = update.expire_time,
                other => {
                    return Err(invalid(format!(
                        "the update mask path '{other}' cannot be changed on a snapshot; use labels or expire_time"
                    )));
                }
            }
        }
        self.put_resource(
            ResourceKind::Snapshot,
            &self.inner.snapshots,
            &snap.name,
            &snap,
            false,
        )
        .await?;
        Ok(snap)
    }

    pub async fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.get_snapshot(name)?;
        self.inner
            .store
            .delete_resource(ResourceKind::Snapshot, name)
            .await?;
        self.inner.snapshots.write().map_err(poisoned)?.remove(name);
        Ok(())
    }
}
