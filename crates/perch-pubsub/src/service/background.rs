//! Background work: numbered progress flushes (and the loop that runs them), and retention —
//! dropping log segments nothing needs, streams nothing refers to, and expired snapshots.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{PubsubService, poisoned};
use crate::Result;

impl PubsubService {
    /// Writes changed acknowledgement progress to the store.
    pub async fn flush_progress(&self) -> Result<()> {
        let _running = self.inner.flushes.running.lock().await;
        self.flush_progress_now().await
    }

    /// Returns once every acknowledgement applied before the call is on disk: exactly-once
    /// confirmations are sent only after this. Concurrent callers share one flush.
    pub async fn persist_acks(&self) -> Result<()> {
        let flushes = &self.inner.flushes;
        // Any flush numbered above the current count snapshots progress after our acks.
        let needed = flushes.started.load(Ordering::SeqCst) + 1;
        let _running = flushes.running.lock().await;
        if flushes.durable.load(Ordering::SeqCst) >= needed {
            return Ok(());
        }
        self.flush_progress_now().await
    }

    /// One numbered flush; the caller holds `flushes.running`. Progress whose save fails is
    /// marked unsaved again, so the next flush retries it.
    async fn flush_progress_now(&self) -> Result<()> {
        let flushes = &self.inner.flushes;
        let number = flushes.started.fetch_add(1, Ordering::SeqCst) + 1;
        let subs = self.all_subscriptions()?;
        let mut updates = Vec::new();
        let mut taken_from = Vec::new();
        for sub in subs {
            let uid = sub.config.read().map_err(poisoned)?.uid;
            let taken = sub.state.lock().map_err(poisoned)?.take_progress();
            if let Some(p) = taken {
                updates.push((uid, p));
                taken_from.push(sub);
            }
        }
        if !updates.is_empty()
            && let Err(e) = self.inner.store.save_progress(updates).await
        {
            for sub in taken_from {
                sub.state.lock().map_err(poisoned)?.mark_unsaved();
            }
            return Err(e.into());
        }
        flushes.durable.store(number, Ordering::SeqCst);
        Ok(())
    }

    pub(super) async fn flush_loop(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.inner.options.progress_flush_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            if let Err(e) = self.flush_progress().await {
                tracing::warn!(error = %e, "could not save acknowledgement progress; will retry");
            }
        }
        if let Err(e) = self.flush_progress().await {
            tracing::error!(error = %e, "could not save acknowledgement progress at shutdown; acked messages may be redelivered");
        }
    }

    pub(super) async fn housekeeping_loop(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.inner.options.housekeeping_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.apply_retention().await {
                tracing::warn!(error = %e, "retention pass failed");
            }
        }
    }

    fn topic_has_subscriptions(&self, topic_uid: u64) -> Result<bool> {
        Ok(self
            .all_subscriptions()?
            .iter()
            .any(|s| s.config.read().is_ok_and(|c| c.topic_uid == topic_uid)))
    }

    /// Drops whole log segments nothing needs any more, and streams nothing refers to.
    pub async fn apply_retention(&self) -> Result<()> {
        let now = self.now();
        let log = self.inner.log.clone();
        // Listed before anything else is read: a stream made after this is not touched, and one
        // made before it belongs to a topic that is by now in `topics` or still in `creating`.
        let streams = log.streams();
        let (keep, referenced) = self.retention_plan(now)?;
        for (uid, before) in keep {
            if before > 1 && before != u64::MAX {
                log.truncate_before(uid, before).await?;
            } else if before == u64::MAX {
                // A topic with no subscriptions and no retention keeps nothing. The head is read
                // first and the subscriptions checked after: one made since starts at or after
                // that head, so nothing it is owed is dropped.
                let head = log.next_seq(uid)?;
                if !self.topic_has_subscriptions(uid)? {
                    log.truncate_before(uid, head).await?;
                }
            }
        }
        for stream in streams {
            if !referenced.contains(&stream) {
                log.delete_stream(stream).await?;
            }
        }
        let expired: Vec<String> = self
            .inner
            .snapshots
            .read()
            .map_err(poisoned)?
            .values()
            .filter(|s| s.expire_time <= now)
            .map(|s| s.name.clone())
            .collect();
        for name in expired {
            self.delete_snapshot(&name).await?;
        }
        Ok(())
    }

    /// What retention keeps at `now`: per stream, the first sequence number still needed
    /// (`u64::MAX`: nothing needs any), and the streams something refers to.
    fn retention_plan(&self, now: DateTime<Utc>) -> Result<(HashMap<u64, u64>, HashSet<u64>)> {
        let log = &self.inner.log;
        let mut keep: HashMap<u64, u64> = HashMap::new();
        let mut referenced: HashSet<u64> = HashSet::new();
        referenced.extend(self.inner.creating.lock().map_err(poisoned)?.iter());
        for t in self.inner.topics.read().map_err(poisoned)?.values() {
            referenced.insert(t.uid);
            let k = match t.message_retention_seconds {
                Some(r) => log.seq_at_time(t.uid, now - chrono::Duration::seconds(r))?,
                None => u64::MAX,
            };
            keep.insert(t.uid, k);
        }
        for sub in self.all_subscriptions()? {
            let c = sub.config.read().map_err(poisoned)?.clone();
            referenced.insert(c.topic_uid);
            let expired = log.seq_at_time(
                c.topic_uid,
                now - chrono::Duration::seconds(c.message_retention_seconds),
            )?;
            let floor = sub.state.lock().map_err(poisoned)?.floor();
            let k = if c.retain_acked_messages {
                expired
            } else {
                floor.max(expired)
            };
            let entry = keep.entry(c.topic_uid).or_insert(u64::MAX);
            *entry = (*entry).min(k);
        }
        for snap in self.inner.snapshots.read().map_err(poisoned)?.values() {
            if snap.expire_time > now {
                referenced.insert(snap.topic_uid);
                let entry = keep.entry(snap.topic_uid).or_insert(u64::MAX);
                *entry = (*entry).min(snap.floor);
            }
        }
        Ok((keep, referenced))
    }
}
