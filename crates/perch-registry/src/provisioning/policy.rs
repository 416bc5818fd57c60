//! Allow and deny lists: importing (all entries in one commit, at most `POLICY_ENTRIES_MAX` a
//! registry), removing and listing entries, and revoking the provisioned devices a new denylist
//! entry matches.
//!
//! Owns the entries; matching a request against them is `evaluate`'s (from one snapshot).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use perch_core::model::Device;
use perch_core::{DeviceId, DeviceName, DeviceRef, ErrorCode, RegistryName, Rejection};
use perch_store::{RecordKind, RecordUpdate};

use super::model::{EntryKind, PolicyEntry, PolicyList};
use super::records::{decode, encode, entry_key, put};
use super::{POLICY_ENTRIES_MAX, ProvisioningService};
use crate::{DevicePatch, Result};

/// Devices read per store call while a new denylist entry looks for the devices it blocks.
const DENYLIST_SCAN_PAGE: usize = 500;

impl ProvisioningService {
    /// Adds entries; a denylist entry also blocks the provisioned devices it matches.
    pub async fn add_policy_entries(
        &self,
        registry: &RegistryName,
        entries: Vec<PolicyEntry>,
    ) -> Result<usize> {
        self.registry.get_registry(registry).await?;
        for e in &entries {
            if e.value.is_empty() || e.value.len() > 255 || e.value.contains('/') {
                return Err(Rejection::invalid_argument(format!(
                    "policy entry value '{}' must be 1 to 255 characters without '/'",
                    e.value
                ))
                .into());
            }
        }
        let existing = self
            .store()
            .list_records(
                RecordKind::PolicyEntry,
                &format!("{registry}/"),
                POLICY_ENTRIES_MAX + 1,
            )
            .await?
            .len();
        if existing + entries.len() > POLICY_ENTRIES_MAX {
            return Err(Rejection::new(
                ErrorCode::ResourceExhausted,
                format!("a registry holds at most {POLICY_ENTRIES_MAX} policy entries"),
            )
            .into());
        }
        // One transaction for the whole import: all entries or none.
        let mut puts: Vec<(RecordKind, String, RecordUpdate)> = Vec::with_capacity(entries.len());
        for e in &entries {
            puts.push((
                RecordKind::PolicyEntry,
                entry_key(registry, e.list, e.kind, &e.value),
                put(encode(e)?),
            ));
        }
        self.store().update_records(puts).await?;
        let denied: Vec<&PolicyEntry> = entries
            .iter()
            .filter(|e| e.list == PolicyList::Deny)
            .collect();
        if !denied.is_empty() {
            self.block_denylisted(registry, &denied).await?;
        }
        Ok(entries.len())
    }

    pub async fn remove_policy_entries(
        &self,
        registry: &RegistryName,
        entries: &[PolicyEntry],
    ) -> Result<usize> {
        let removed = Arc::new(AtomicUsize::new(0));
        let deletes = entries
            .iter()
            .map(|e| {
                let removed = removed.clone();
                let delete: RecordUpdate = Box::new(move |current| {
                    if current.is_some() {
                        removed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None)
                });
                (
                    RecordKind::PolicyEntry,
                    entry_key(registry, e.list, e.kind, &e.value),
                    delete,
                )
            })
            .collect();
        self.store().update_records(deletes).await?;
        Ok(removed.load(Ordering::Relaxed))
    }

    pub async fn list_policy_entries(&self, registry: &RegistryName) -> Result<Vec<PolicyEntry>> {
        self.store()
            .list_records(
                RecordKind::PolicyEntry,
                &format!("{registry}/"),
                POLICY_ENTRIES_MAX,
            )
            .await?
            .iter()
            .map(|(_, v)| decode(v))
            .collect()
    }

    /// Blocks provisioned devices a new denylist entry matches (revocation: the bridge closes
    /// their connections on the resulting DeviceChanged event).
    async fn block_denylisted(
        &self,
        registry: &RegistryName,
        entries: &[&PolicyEntry],
    ) -> Result<()> {
        let mut after: Option<DeviceId> = None;
        loop {
            let page = self
                .store()
                .list_devices(
                    registry,
                    after.clone(),
                    DENYLIST_SCAN_PAGE,
                    Box::new(|_| true),
                )
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for d in &page {
                let hit = entries.iter().any(|e| denylist_matches(e, d));
                if hit && !d.blocked {
                    let name = DeviceName {
                        registry: registry.clone(),
                        device: DeviceRef::NumId(d.num_id),
                    };
                    let patch = DevicePatch {
                        blocked: true,
                        ..Default::default()
                    };
                    self.registry
                        .update_device(&name, patch, &["blocked".to_owned()])
                        .await?;
                }
            }
            if page.len() < DENYLIST_SCAN_PAGE {
                break;
            }
        }
        Ok(())
    }
}

/// Whether a denylist entry matches what a provisioned device carries.
fn denylist_matches(e: &PolicyEntry, d: &Device) -> bool {
    match e.kind {
        EntryKind::DeviceId => d.id.as_str() == e.value,
        EntryKind::Serial => d.metadata.get("serial") == Some(&e.value),
        EntryKind::Mac => d
            .metadata
            .get("mac")
            .is_some_and(|m| m.eq_ignore_ascii_case(&e.value)),
        EntryKind::KeyFingerprint => d.metadata.get("keyFingerprint") == Some(&e.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denylist_entries_match_the_provisioned_metadata() {
        let mut d = Device::new("pi-1".parse().unwrap(), 7);
        d.metadata.insert("serial".into(), "S1".into());
        d.metadata.insert("mac".into(), "aa:bb".into());
        d.metadata.insert("keyFingerprint".into(), "f00".into());
        let entry = |kind, value: &str| PolicyEntry {
            list: PolicyList::Deny,
            kind,
            value: value.into(),
            reason: String::new(),
        };
        for (e, want) in [
            (entry(EntryKind::DeviceId, "pi-1"), true),
            (entry(EntryKind::DeviceId, "pi-2"), false),
            (entry(EntryKind::Serial, "S1"), true),
            (entry(EntryKind::Serial, "s1"), false),
            (entry(EntryKind::Mac, "AA:BB"), true),
            (entry(EntryKind::KeyFingerprint, "f00"), true),
            (entry(EntryKind::KeyFingerprint, "F00"), false),
        ] {
            assert_eq!(denylist_matches(&e, &d), want, "{e:?}");
        }
    }
}
