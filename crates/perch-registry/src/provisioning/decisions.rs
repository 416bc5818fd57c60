//! Provisioning decisions: the record each request leaves (bounded per bootstrap: refusals and
//! repeats stop being stored at the cap, and are still counted), listing them newest first with
//! filters, and the retention purge that deletes old ones and counts them off their bootstraps.
//!
//! Owns the decision records and the bootstrap counters they move.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use perch_core::RegistryName;
use perch_core::model::Device;
use perch_store::{RecordKind, RecordUpdate};

use super::model::{Bootstrap, Claims, Decision};
use super::records::{
    bootstrap_key, bump_bootstrap, decision_key, decision_key_nanos, decode, encode,
};
use super::{DECISION_PURGE_INTERVAL, DECISIONS_LIST_MAX, ProvisioningService};
use crate::Result;

/// Decision records read per store call while `list_decisions` filters its way back in time.
const DECISIONS_PAGE: usize = 512;

/// Whether a decision is stored whatever the bootstrap's decision count (it changed a device),
/// or only under the cap (a refusal or a repeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keep {
    Always,
    UnderCap,
}

/// A new decision, DENIED until it is allowed ([`allow`]) or given its reason.
pub(super) fn new_decision(
    time: DateTime<Utc>,
    registry: &RegistryName,
    bootstrap: &str,
    request_id: String,
    claims: Claims,
) -> Decision {
    Decision {
        time,
        registry: registry.to_string(),
        bootstrap: bootstrap.to_owned(),
        request_id,
        claims,
        decision: "DENIED".into(),
        reason: None,
        message: String::new(),
        rule: String::new(),
        key_fingerprint: String::new(),
        num_id: None,
        name: None,
        certificate: None,
        private_key: None,
    }
}

/// Marks a decision allowed for `device`.
pub(super) fn allow(decision: &mut Decision, registry: &RegistryName, device: &Device) {
    decision.decision = "ALLOWED".into();
    decision.reason = None;
    decision.message = format!("device `{}` registered", device.id);
    decision.num_id = Some(device.num_id.to_string());
    decision.name = Some(registry.device_name(device.num_id));
    decision.claims.device_id = device.id.to_string();
}

impl ProvisioningService {
    pub async fn list_decisions(
        &self,
        registry: &RegistryName,
        bootstrap: Option<&str>,
        reason: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Decision>> {
        let prefix = format!("{registry}/");
        let limit = limit.clamp(1, DECISIONS_LIST_MAX);
        let mut out: Vec<Decision> = Vec::new();
        let mut before = None;
        // Newest first, a page at a time, so a filter over a long history stops at `limit`.
        loop {
            let page = self
                .store()
                .list_records_rev(RecordKind::Decision, &prefix, before.take(), DECISIONS_PAGE)
                .await?;
            for (_, v) in &page {
                let d: Decision = decode(v)?;
                if bootstrap.is_some_and(|b| d.bootstrap != b) {
                    continue;
                }
                if reason.is_some_and(|r| {
                    d.reason.map(|x| x.as_str()) != Some(r)
                        && !(r == "ALLOWED" && d.decision == "ALLOWED")
                }) {
                    continue;
                }
                out.push(d);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            match page.last() {
                Some((key, _)) if page.len() == DECISIONS_PAGE => before = Some(key.clone()),
                _ => return Ok(out),
            }
        }
    }

    /// Deletes the decisions made before `cutoff`, in every registry, and counts them off their
    /// bootstraps' `decisions`; returns how many. Registries are visited newest key first, one
    /// hop each (`list_records_rev` before the registry's prefix), each purged oldest first.
    pub async fn purge_decisions(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        let cutoff_nanos = cutoff.timestamp_nanos_opt().unwrap_or(i64::MAX);
        let mut purged = 0;
        let mut before = None;
        loop {
            let last = self
                .store()
                .list_records_rev(RecordKind::Decision, "", before.take(), 1)
                .await?;
            let Some((registry, _)) = last.first().and_then(|(k, _)| k.rsplit_once('/')) else {
                return Ok(purged);
            };
            let prefix = format!("{registry}/");
            purged += self.purge_registry_decisions(&prefix, cutoff_nanos).await?;
            before = Some(prefix);
        }
    }

    /// Deletes one registry's decisions older than `cutoff_nanos`, a page per commit.
    async fn purge_registry_decisions(&self, prefix: &str, cutoff_nanos: i64) -> Result<usize> {
        let mut purged = 0;
        loop {
            let page = self
                .store()
                .list_records(RecordKind::Decision, prefix, DECISIONS_PAGE)
                .await?;
            let old: Vec<&(String, Vec<u8>)> = page
                .iter()
                .take_while(|(k, _)| decision_key_nanos(k).is_some_and(|n| n < cutoff_nanos))
                .collect();
            if old.is_empty() {
                return Ok(purged);
            }
            let mut per_bootstrap: BTreeMap<String, u64> = BTreeMap::new();
            let mut updates: Vec<(RecordKind, String, RecordUpdate)> = Vec::new();
            for (key, value) in &old {
                if let Ok(d) = serde_json::from_slice::<Decision>(value) {
                    *per_bootstrap.entry(d.bootstrap).or_default() += 1;
                }
                updates.push((RecordKind::Decision, key.clone(), Box::new(|_| Ok(None))));
            }
            for (bootstrap, n) in per_bootstrap {
                updates.push((
                    RecordKind::Bootstrap,
                    format!("{prefix}bootstraps/{bootstrap}"),
                    bump_bootstrap(move |b| b.decisions = b.decisions.saturating_sub(n)),
                ));
            }
            let n = old.len();
            self.store().update_records(updates).await?;
            purged += n;
            if n < page.len() {
                return Ok(purged);
            }
        }
    }

    /// Purges decisions older than `retention` now and every `DECISION_PURGE_INTERVAL` until
    /// `stop` turns true (`perch serve` runs it when a retention is set).
    pub async fn run_decision_retention(
        self,
        retention: std::time::Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        loop {
            let cutoff = self
                .registry
                .clock()
                .now()
                .checked_sub_signed(retention)
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            match self.purge_decisions(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    purged = n,
                    "provisioning decisions past their retention purged"
                ),
                Err(e) => tracing::warn!(error = %e, "purging old provisioning decisions failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(DECISION_PURGE_INTERVAL) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Stores a decision and counts it on its bootstrap (`bump`, and its `decisions`), in one
    /// commit. A decision that changed no device (`Keep::UnderCap`: a refusal or a repeat) is
    /// stored only while the bootstrap holds fewer than the cap; past it, and when the bootstrap
    /// is gone, only the counters move. So a bootstrap cannot fill the disk with refusals.
    pub(super) async fn store_decision(
        &self,
        registry: &RegistryName,
        d: &Decision,
        bump: fn(&mut Bootstrap),
        keep: Keep,
    ) -> Result<()> {
        let cap = self.registry.options().provisioning.decisions_per_bootstrap;
        let stored = Arc::new(AtomicBool::new(false));
        let count = {
            let stored = stored.clone();
            bump_bootstrap(move |b| {
                bump(b);
                if keep == Keep::Always || b.decisions < cap {
                    b.decisions += 1;
                    stored.store(true, Ordering::Relaxed);
                }
            })
        };
        let bytes = encode(d)?;
        let write: RecordUpdate =
            Box::new(move |_| Ok(stored.load(Ordering::Relaxed).then_some(bytes)));
        self.store()
            .update_records(vec![
                (
                    RecordKind::Bootstrap,
                    bootstrap_key(registry, &d.bootstrap),
                    count,
                ),
                (RecordKind::Decision, decision_key(registry, d), write),
            ])
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::Reason;
    use super::super::testing::{refused_request, registry_with_bootstrap, service};

    #[tokio::test]
    async fn refusals_past_the_cap_are_counted_but_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = service(dir.path(), 3).await;
        let reg = registry_with_bootstrap(&p, "reg").await;
        for _ in 0..5 {
            let d = p.provision(&reg, "lot-1", refused_request()).await.unwrap();
            assert_eq!(d.reason, Some(Reason::BootstrapDisabled));
        }
        assert_eq!(
            p.list_decisions(&reg, None, None, 100).await.unwrap().len(),
            3
        );
        let b = p.get_bootstrap(&reg, "lot-1").await.unwrap();
        assert_eq!((b.refused, b.decisions), (5, 3));
    }

    #[tokio::test]
    async fn the_purge_deletes_decisions_past_the_retention_in_every_registry_and_counts_them_off()
    {
        let dir = tempfile::tempdir().unwrap();
        let (p, clock) = service(dir.path(), 100).await;
        // "reg-2" sorts before "reg/" ('-' < '/'): the purge must still find both registries.
        let regs = [
            registry_with_bootstrap(&p, "reg").await,
            registry_with_bootstrap(&p, "reg-2").await,
            registry_with_bootstrap(&p, "zeta").await,
        ];
        for reg in &regs {
            for _ in 0..3 {
                p.provision(reg, "lot-1", refused_request()).await.unwrap();
            }
        }
        clock.advance(chrono::Duration::days(91));
        for reg in &regs {
            p.provision(reg, "lot-1", refused_request()).await.unwrap();
        }
        let cutoff = perch_core::Clock::now(clock.as_ref()) - chrono::Duration::days(90);
        assert_eq!(p.purge_decisions(cutoff).await.unwrap(), 9);
        for reg in &regs {
            let left = p.list_decisions(reg, None, None, 100).await.unwrap();
            assert_eq!(left.len(), 1, "{reg}");
            assert!(left[0].time > cutoff);
            assert_eq!(p.get_bootstrap(reg, "lot-1").await.unwrap().decisions, 1);
        }
        assert_eq!(p.purge_decisions(cutoff).await.unwrap(), 0);
    }
}
