//! The checks of a provisioning request that read only what the snapshot and the request hold,
//! each answering with the refusal the device sees: the bootstrap's state, quota and id
//! pattern, the policy lists, and whether an existing device may be re-provisioned.
//!
//! Owns these rules and their messages; `evaluate` runs them in order.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use perch_core::DeviceId;
use perch_core::model::Device;

use super::generate_p256_key_pair;
use super::glob::glob_matches;
use super::model::{
    Approval, Bootstrap, Decision, EntryKind, PolicyEntry, ProvisionRequest, PublicKeyFormatName,
    Reason, ReprovisionPolicy, RequestKey, Webhook,
};
use super::request::{Refusal, provisioned_for};

/// The records a request's checks read, from one snapshot: bootstrap, webhook, approval, then
/// the deny and allow entries of the claims (serial, MAC, device id, key fingerprint).
pub(super) struct Snapshot {
    pub(super) bootstrap: Option<Bootstrap>,
    pub(super) webhook: Webhook,
    pub(super) approval: Option<Approval>,
    pub(super) denied: [Option<PolicyEntry>; 4],
    pub(super) allowed: [Option<PolicyEntry>; 4],
    pub(super) has_allowlist: bool,
}

/// The claims policy entries match on, in the order of `Snapshot::denied` and `allowed`.
pub(super) type ClaimValues<'a> = [(EntryKind, &'a str); 4];

pub(super) fn quota_exceeded(bootstrap_id: &str, quota: u64) -> Refusal {
    (
        Reason::QuotaExceeded,
        format!("bootstrap `{bootstrap_id}` has used its quota of {quota} devices"),
    )
}

pub(super) fn bootstrap_gone(bootstrap_id: &str) -> Refusal {
    (
        Reason::BootstrapDisabled,
        format!("bootstrap `{bootstrap_id}` no longer exists"),
    )
}

/// The request to evaluate: as sent, or, when it asks for a server-made ES256 key (and brings
/// none), with that key's public half, the private half going into the decision.
pub(super) fn with_generated_key<'a>(
    request: &'a ProvisionRequest,
    decision: &mut Decision,
) -> std::result::Result<Cow<'a, ProvisionRequest>, Refusal> {
    match request.generate_key.as_deref() {
        Some("ES256") if request.public_key.is_none() && request.csr.is_none() => {
            let (private, public) =
                generate_p256_key_pair().map_err(|e| (Reason::Internal, e.to_string()))?;
            decision.private_key = Some(private);
            Ok(Cow::Owned(ProvisionRequest {
                public_key: Some(RequestKey {
                    format: PublicKeyFormatName::Es256Pem,
                    key: public,
                }),
                ..request.clone()
            }))
        }
        _ => Ok(Cow::Borrowed(request)),
    }
}

/// The snapshot's bootstrap, if it still exists, is enabled and has not expired at `now`.
pub(super) fn usable_bootstrap<'a>(
    bootstrap: Option<&'a Bootstrap>,
    bootstrap_id: &str,
    now: DateTime<Utc>,
) -> std::result::Result<&'a Bootstrap, Refusal> {
    let b = bootstrap.ok_or_else(|| bootstrap_gone(bootstrap_id))?;
    if !b.enabled {
        return Err((
            Reason::BootstrapDisabled,
            format!("bootstrap `{bootstrap_id}` is disabled"),
        ));
    }
    if b.expire_time.is_some_and(|t| t <= now) {
        return Err((
            Reason::BootstrapExpired,
            format!("bootstrap `{bootstrap_id}` expired"),
        ));
    }
    Ok(b)
}

/// The request against its bootstrap: quota (a repeat passes even over it), the device id
/// pattern, and a `generate_key` that was not honoured.
pub(super) fn check_request(
    b: &Bootstrap,
    request: &ProvisionRequest,
    id: &DeviceId,
    repeat: bool,
    decision: &Decision,
) -> std::result::Result<(), Refusal> {
    if b.provisioned >= b.device_quota && !repeat {
        return Err(quota_exceeded(&b.id, b.device_quota));
    }
    if !glob_matches(&b.device_id_pattern, id.as_str()) {
        return Err((
            Reason::InvalidRequest,
            format!(
                "device id `{id}` does not match the bootstrap's pattern `{}`",
                b.device_id_pattern
            ),
        ));
    }
    if let Some(other) = request.generate_key.as_deref()
        && (other != "ES256" || decision.private_key.is_none())
    {
        return Err((
            Reason::InvalidRequest,
            format!("generate_key takes \"ES256\" and no public_key or csr, got '{other}'"),
        ));
    }
    Ok(())
}

/// The denylist (any claim on it refuses), then the allowlist (when the registry has one, some
/// claim must be on it); the matching entry becomes the decision's rule.
pub(super) fn check_policy_lists(
    claims: &ClaimValues<'_>,
    snapshot: &Snapshot,
    decision: &mut Decision,
) -> std::result::Result<(), Refusal> {
    for ((kind, value), entry) in claims.iter().zip(&snapshot.denied) {
        if let Some(e) = entry {
            decision.rule = format!("denylist {}={}", kind.as_str(), value);
            let why = if e.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", e.reason)
            };
            return Err((
                Reason::Denylisted,
                format!("{} `{value}` is denylisted{why}", kind.as_str()),
            ));
        }
    }
    if snapshot.has_allowlist {
        let Some((kind, value)) = claims
            .iter()
            .zip(&snapshot.allowed)
            .find_map(|(claim, entry)| entry.as_ref().map(|_| claim))
        else {
            return Err((
                Reason::NotAllowlisted,
                "no allowlist entry matches the device's serial, MAC, id or key".into(),
            ));
        };
        decision.rule = format!("allowlist {}={}", kind.as_str(), value);
    }
    Ok(())
}

/// Re-provisioning (ROTATE or REQUIRE_APPROVAL) reaches only a device this bootstrap
/// provisioned for the same serial: never one an operator made, nor another batch's.
pub(super) fn check_reprovision(
    b: &Bootstrap,
    existing: &Device,
    id: &DeviceId,
    serial: &str,
) -> std::result::Result<(), Refusal> {
    if b.reprovision_policy == ReprovisionPolicy::Deny {
        return Err((
            Reason::AlreadyRegistered,
            format!("device `{id}` is already registered"),
        ));
    }
    if !provisioned_for(existing, &b.id, serial) {
        return Err((
            Reason::AlreadyRegistered,
            format!(
                "device `{id}` is already registered and was not provisioned by bootstrap `{}` for this serial; only such a device may be re-provisioned",
                b.id
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provisioning::model::{Claims, PolicyList};

    fn bootstrap() -> Bootstrap {
        Bootstrap {
            id: "lot-1".into(),
            enabled: true,
            device_quota: 2,
            device_id_pattern: "pi-*".into(),
            ..Default::default()
        }
    }

    fn decision() -> Decision {
        let registry = perch_core::RegistryName::parse(
            "parent",
            "projects/p/locations/us-central1/registries/reg",
        )
        .unwrap();
        crate::provisioning::decisions::new_decision(
            DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            &registry,
            "lot-1",
            String::new(),
            Claims::default(),
        )
    }

    fn snapshot(denied: Option<PolicyEntry>, allowed: Option<PolicyEntry>) -> Snapshot {
        Snapshot {
            bootstrap: None,
            webhook: Webhook::default(),
            approval: None,
            denied: [denied, None, None, None],
            allowed: [None, None, allowed, None],
            has_allowlist: true,
        }
    }

    fn entry(list: PolicyList, kind: EntryKind, value: &str, reason: &str) -> PolicyEntry {
        PolicyEntry {
            list,
            kind,
            value: value.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn a_bootstrap_is_usable_while_it_exists_is_enabled_and_has_not_expired() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let reason = |b: Option<&Bootstrap>| {
            usable_bootstrap(b, "lot-1", now)
                .map(|_| ())
                .map_err(|e| e.0)
        };
        let mut b = bootstrap();
        assert_eq!(reason(Some(&b)), Ok(()));
        assert_eq!(reason(None), Err(Reason::BootstrapDisabled));
        b.expire_time = Some(now);
        assert_eq!(reason(Some(&b)), Err(Reason::BootstrapExpired));
        b.enabled = false;
        assert_eq!(reason(Some(&b)), Err(Reason::BootstrapDisabled));
    }

    #[test]
    fn quota_pattern_and_generate_key_are_checked_in_that_order() {
        let id: DeviceId = "pi-1".parse().unwrap();
        let request = ProvisionRequest::default();
        let mut b = bootstrap();
        assert!(check_request(&b, &request, &id, false, &decision()).is_ok());
        let other: DeviceId = "gw-1".parse().unwrap();
        let (reason, message) =
            check_request(&b, &request, &other, false, &decision()).unwrap_err();
        assert_eq!(reason, Reason::InvalidRequest);
        assert!(message.contains("pattern `pi-*`"), "{message}");
        b.provisioned = 2;
        let (reason, message) =
            check_request(&b, &request, &other, false, &decision()).unwrap_err();
        assert_eq!(reason, Reason::QuotaExceeded);
        assert_eq!(message, "bootstrap `lot-1` has used its quota of 2 devices");
        // A repeat passes over quota.
        assert!(check_request(&b, &request, &id, true, &decision()).is_ok());
        let unhonoured = ProvisionRequest {
            generate_key: Some("RS256".into()),
            ..Default::default()
        };
        let (reason, _) = check_request(&b, &unhonoured, &id, true, &decision()).unwrap_err();
        assert_eq!(reason, Reason::InvalidRequest);
    }

    #[test]
    fn the_denylist_wins_over_the_allowlist_and_names_its_rule() {
        let claims: ClaimValues<'_> = [
            (EntryKind::Serial, "S1"),
            (EntryKind::Mac, ""),
            (EntryKind::DeviceId, "pi-1"),
            (EntryKind::KeyFingerprint, "f00"),
        ];
        let denied = entry(PolicyList::Deny, EntryKind::Serial, "S1", "stolen");
        let allowed = entry(PolicyList::Allow, EntryKind::DeviceId, "pi-1", "");
        let mut d = decision();
        let (reason, message) = check_policy_lists(
            &claims,
            &snapshot(Some(denied), Some(allowed.clone())),
            &mut d,
        )
        .unwrap_err();
        assert_eq!(reason, Reason::Denylisted);
        assert_eq!(message, "serial `S1` is denylisted: stolen");
        assert_eq!(d.rule, "denylist serial=S1");
        let mut d = decision();
        check_policy_lists(&claims, &snapshot(None, Some(allowed)), &mut d).unwrap();
        assert_eq!(d.rule, "allowlist device_id=pi-1");
        let (reason, _) =
            check_policy_lists(&claims, &snapshot(None, None), &mut decision()).unwrap_err();
        assert_eq!(reason, Reason::NotAllowlisted);
    }

    #[test]
    fn only_a_device_this_bootstrap_provisioned_for_the_serial_is_reprovisioned() {
        let id: DeviceId = "pi-1".parse().unwrap();
        let mut existing = Device::new(id.clone(), 1);
        existing
            .metadata
            .insert("provisionedBy".into(), "lot-1".into());
        existing.metadata.insert("serial".into(), "S1".into());
        let mut b = bootstrap();
        let reason =
            |b: &Bootstrap, serial| check_reprovision(b, &existing, &id, serial).map_err(|e| e.0);
        assert_eq!(reason(&b, "S1"), Err(Reason::AlreadyRegistered));
        b.reprovision_policy = ReprovisionPolicy::Rotate;
        assert_eq!(reason(&b, "S1"), Ok(()));
        assert_eq!(reason(&b, "S2"), Err(Reason::AlreadyRegistered));
        b.id = "lot-2".into();
        assert_eq!(reason(&b, "S1"), Err(Reason::AlreadyRegistered));
    }

    #[test]
    fn a_generated_key_replaces_no_key_the_request_brought() {
        let asks = ProvisionRequest {
            generate_key: Some("ES256".into()),
            ..Default::default()
        };
        let mut d = decision();
        let request = with_generated_key(&asks, &mut d).unwrap();
        assert!(d.private_key.is_some());
        assert_eq!(
            request.public_key.as_ref().map(|k| k.format),
            Some(PublicKeyFormatName::Es256Pem)
        );
        let brings = ProvisionRequest {
            csr: Some("csr".into()),
            ..asks
        };
        let mut d = decision();
        assert!(matches!(
            with_generated_key(&brings, &mut d).unwrap(),
            Cow::Borrowed(_)
        ));
        assert!(d.private_key.is_none());
    }
}
