//! How provisioning keeps its records in the store: the key of each record kind (bootstraps,
//! policy entries, decisions, approvals), the JSON encoding, and the record updates the
//! services compose into one commit.
//!
//! Owns key layout and encoding; does not own what the records mean.

use perch_core::{ErrorCode, RegistryName, Rejection};
use perch_store::RecordUpdate;

use super::model::{Bootstrap, Decision, EntryKind, PolicyList};
use crate::Result;

pub(super) fn bootstrap_key(registry: &RegistryName, id: &str) -> String {
    format!("{registry}/bootstraps/{id}")
}

pub(super) fn entry_key(
    registry: &RegistryName,
    list: PolicyList,
    kind: EntryKind,
    value: &str,
) -> String {
    let l = match list {
        PolicyList::Allow => "allow",
        PolicyList::Deny => "deny",
    };
    format!("{registry}/{l}/{}/{value}", kind.as_str())
}

pub(super) fn approval_key(registry: &RegistryName, device_id: &str) -> String {
    format!("{registry}/{device_id}")
}

/// A new decision's record key: registry, then time, so a registry's decisions list in order.
pub(super) fn decision_key(registry: &RegistryName, d: &Decision) -> String {
    let nanos = d.time.timestamp_nanos_opt().unwrap_or_default();
    format!("{registry}/{nanos:020}-{:016x}", rand::random::<u64>())
}

/// The time (Unix nanoseconds) in a decision's key `{registry}/{nanos:020}-{random}`.
pub(super) fn decision_key_nanos(key: &str) -> Option<i64> {
    let (_, tail) = key.rsplit_once('/')?;
    tail.split_once('-')?.0.parse().ok()
}

pub(super) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Rejection::new(ErrorCode::Internal, e.to_string()).into())
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| {
        Rejection::new(
            ErrorCode::Internal,
            format!("corrupt provisioning record: {e}"),
        )
        .into()
    })
}

/// A stored bootstrap's bytes after `change`: the read-modify-write every bootstrap update is.
pub(super) fn changed_bootstrap(
    bytes: &[u8],
    change: impl FnOnce(&mut Bootstrap) -> std::result::Result<(), Rejection>,
) -> std::result::Result<Vec<u8>, Rejection> {
    let internal = |e: serde_json::Error| Rejection::new(ErrorCode::Internal, e.to_string());
    let mut b: Bootstrap = serde_json::from_slice(bytes).map_err(internal)?;
    change(&mut b)?;
    serde_json::to_vec(&b).map_err(internal)
}

/// A record update that changes the counters of a stored bootstrap (none stored: nothing to
/// count).
pub(super) fn bump_bootstrap(bump: impl FnOnce(&mut Bootstrap) + Send + 'static) -> RecordUpdate {
    Box::new(move |current: Option<Vec<u8>>| {
        current
            .map(|bytes| {
                changed_bootstrap(&bytes, |b| {
                    bump(b);
                    Ok(())
                })
            })
            .transpose()
    })
}

/// A record update that writes `bytes` whatever was there.
pub(super) fn put(bytes: Vec<u8>) -> RecordUpdate {
    Box::new(move |_| Ok(Some(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_keys_carry_their_time() {
        assert_eq!(
            decision_key_nanos("projects/p/x/00000000000000000042-ab"),
            Some(42)
        );
        assert_eq!(decision_key_nanos("projects/p/x/nodash"), None);
    }
}
