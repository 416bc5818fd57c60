//! A provisioning request from admission to decision: the bootstrap's rate and the request's
//! size limits, then the checks in their fixed order (bootstrap → request → denylist →
//! allowlist → existing device → webhook → approval), then registering the device (or
//! rotating its key) and recording the decision.
//!
//! Owns the order of the checks and what each outcome stores; the checks' pieces live with
//! what they check (`request`, `policy`, `webhook`, `approvals`, `bootstrap`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use perch_core::model::{Device, DeviceCredential};
use perch_core::{DeviceId, DeviceName, DeviceRef, ErrorCode, RegistryName, Rejection};
use perch_store::RecordKind;

use super::checks::{
    ClaimValues, Snapshot, bootstrap_gone, check_policy_lists, check_reprovision, check_request,
    quota_exceeded, usable_bootstrap, with_generated_key,
};
use super::decisions::{Keep, allow, new_decision};
use super::model::{
    Bootstrap, Decision, EntryKind, PolicyEntry, PolicyList, ProvisionRequest, Reason,
    ReprovisionPolicy,
};
use super::records::{
    approval_key, bootstrap_key, changed_bootstrap, decision_key, decode, entry_key,
};
use super::request::{
    Refusal, bounded_claims, certificate_credential, oversized, provisioned_metadata,
    request_credential, truncated,
};
use super::{ProvisioningService, REQUEST_ID_MAX_BYTES};
use crate::{DevicePatch, Result};

/// What validation allowed: a new device whose decision was stored with it, or an existing one
/// whose decision is still to be stored: rotated to the new key, or a repeat (unchanged).
enum Allowed {
    Stored(Device),
    Rotated(Device),
    Repeat(Device),
}

/// The device a request names, and the one already registered under that id.
struct Requested {
    id: DeviceId,
    name: DeviceName,
    existing: Option<Device>,
}

fn internal(e: crate::Error) -> Refusal {
    (Reason::Internal, e.to_string())
}

impl ProvisioningService {
    /// Answers a request in order: the bootstrap's rate (a request over it is answered
    /// RATE_LIMITED and not stored), the request's size limits, then `evaluate`'s checks
    /// (bootstrap → request → denylist → allowlist → existing device → webhook). When allowed,
    /// registers the device with its own credential. Always returns the decision, which is
    /// also stored — for a new device in the same commit that creates it and takes its slot of
    /// the bootstrap's quota; a refusal within the bootstrap's decision cap.
    pub async fn provision(
        &self,
        registry: &RegistryName,
        bootstrap_id: &str,
        request: ProvisionRequest,
    ) -> Result<Decision> {
        let now = self.registry.clock().now();
        let mut decision = new_decision(
            now,
            registry,
            bootstrap_id,
            truncated(&request.request_id, REQUEST_ID_MAX_BYTES).to_owned(),
            bounded_claims(&request.claims),
        );
        let admitted = self.admit(registry, bootstrap_id).await?;
        let was_admitted = admitted.is_ok();
        let outcome = match admitted {
            Err(refusal) => Err(refusal),
            Ok(()) => match oversized(&request) {
                Some(message) => Err((Reason::InvalidRequest, message)),
                None => {
                    self.evaluate(registry, bootstrap_id, &request, now, &mut decision)
                        .await
                }
            },
        };
        match outcome {
            Ok(Allowed::Stored(device)) => allow(&mut decision, registry, &device),
            Ok(Allowed::Rotated(device)) => {
                allow(&mut decision, registry, &device);
                self.store_decision(registry, &decision, |b| b.provisioned += 1, Keep::Always)
                    .await?;
            }
            Ok(Allowed::Repeat(device)) => {
                allow(&mut decision, registry, &device);
                self.store_decision(registry, &decision, |_| {}, Keep::UnderCap)
                    .await?;
            }
            Err((reason, message)) => {
                decision.private_key = None;
                decision.certificate = None;
                decision.reason = Some(reason);
                decision.message = message;
                // Refused before admission (over the rate, or no such bootstrap): not stored.
                if was_admitted {
                    self.store_decision(registry, &decision, |b| b.refused += 1, Keep::UnderCap)
                        .await?;
                }
            }
        }
        metrics::counter!(
            "perch_provisioning_decisions_total",
            "reason" => decision.reason.map(Reason::as_str).unwrap_or("ALLOWED"),
        )
        .increment(1);
        tracing::info!(
            registry = %registry, bootstrap = bootstrap_id, device = %decision.claims.device_id,
            decision = %decision.decision, reason = decision.reason.map(Reason::as_str).unwrap_or(""),
            "provisioning decision"
        );
        Ok(decision)
    }

    /// The checks after admission, in order; fills in the decision's rule, fingerprint and any
    /// server-made key or certificate as they become known.
    async fn evaluate(
        &self,
        registry: &RegistryName,
        bootstrap_id: &str,
        request: &ProvisionRequest,
        now: DateTime<Utc>,
        decision: &mut Decision,
    ) -> std::result::Result<Allowed, Refusal> {
        // The request's own key first (pure computation), so that one snapshot can answer
        // every lookup its claims need; its errors still count only after the bootstrap's.
        let request = with_generated_key(request, decision)?;
        let parsed = request_credential(&request);
        let fingerprint = parsed.as_ref().map(|(_, f)| f.clone()).unwrap_or_default();
        let claims = [
            (EntryKind::Serial, request.claims.serial.as_str()),
            (EntryKind::Mac, request.claims.mac.as_str()),
            (EntryKind::DeviceId, request.claims.device_id.as_str()),
            (EntryKind::KeyFingerprint, fingerprint.as_str()),
        ];
        let snapshot = self
            .snapshot(registry, bootstrap_id, &claims)
            .await
            .map_err(internal)?;
        let b = usable_bootstrap(snapshot.bootstrap.as_ref(), bootstrap_id, now)?;
        let requested = self.requested_device(registry, &request).await?;
        // A repeat of an allowed request (its answer was lost on the way) is answered again, even
        // over quota: retries are always safe.
        let repeat = requested.existing.as_ref().is_some_and(|d| {
            d.metadata.get("provisionedBy") == Some(&b.id)
                && !fingerprint.is_empty()
                && d.metadata.get("keyFingerprint") == Some(&fingerprint)
                && !d.blocked
        });
        check_request(b, &request, &requested.id, repeat, decision)?;
        let (credential, fingerprint) = parsed?;
        decision.key_fingerprint = fingerprint.clone();
        check_policy_lists(&claims, &snapshot, decision)?;
        if let Some(existing) = requested.existing.as_ref().filter(|_| repeat) {
            decision.rule = "repeat of an allowed request".into();
            decision.certificate = self.certificate_for(&request, &credential.key, &existing.id)?;
            return Ok(Allowed::Repeat(existing.clone()));
        }
        if let Some(existing) = &requested.existing {
            check_reprovision(b, existing, &requested.id, &request.claims.serial)?;
        }
        if !snapshot.webhook.url.is_empty() {
            self.ask_webhook(&snapshot.webhook, b, &request, &fingerprint)
                .await?;
            decision.rule = format!("webhook {}", snapshot.webhook.url);
        }
        if requested.existing.is_some()
            && b.reprovision_policy == ReprovisionPolicy::RequireApproval
        {
            return Err(self
                .hold_for_approval(registry, b, &request, &fingerprint, snapshot.approval)
                .await);
        }
        self.register(registry, b, &request, credential, requested, decision)
            .await
    }

    /// The device the request names (its id must parse) and the one registered under it.
    async fn requested_device(
        &self,
        registry: &RegistryName,
        request: &ProvisionRequest,
    ) -> std::result::Result<Requested, Refusal> {
        let id: DeviceId = request
            .claims
            .device_id
            .parse()
            .map_err(|e: perch_core::IdError| (Reason::InvalidRequest, e.to_string()))?;
        let name = DeviceName {
            registry: registry.clone(),
            device: DeviceRef::Id(id.clone()),
        };
        let existing = match self.registry.get_device(&name).await {
            Ok(d) => Some(d),
            Err(e) if e.code() == ErrorCode::NotFound => None,
            Err(e) => return Err(internal(e)),
        };
        Ok(Requested { id, name, existing })
    }

    /// With every check passed: Perch's CA may sign the CSR (the certificate then becomes the
    /// device's credential), and the device is registered, or re-keyed when it exists, with
    /// the key fingerprint the decision holds.
    async fn register(
        &self,
        registry: &RegistryName,
        b: &Bootstrap,
        request: &ProvisionRequest,
        mut credential: DeviceCredential,
        requested: Requested,
        decision: &mut Decision,
    ) -> std::result::Result<Allowed, Refusal> {
        if let Some(certificate) = self.certificate_for(request, &credential.key, &requested.id)? {
            credential = certificate_credential(&credential, certificate.clone());
            decision.certificate = Some(certificate);
        }
        let provisioned =
            provisioned_metadata(&b.id, &b.lot, &request.claims, &decision.key_fingerprint);
        if let Some(existing) = requested.existing {
            // Rotation: the device keeps its id and numeric id and gets the new key.
            let device = self
                .rotate(&requested.name, credential, provisioned, existing.metadata)
                .await?;
            return Ok(Allowed::Rotated(device));
        }
        let mut device = Device::new(requested.id, 0);
        device.credentials = vec![credential];
        device.metadata = provisioned;
        self.create_provisioned(registry, b, device, decision)
            .await
            .map(Allowed::Stored)
    }

    /// Creates a provisioned device in one commit with its decision and its slot of the
    /// bootstrap's quota (checked again inside the commit).
    async fn create_provisioned(
        &self,
        registry: &RegistryName,
        b: &Bootstrap,
        device: Device,
        decision: &Decision,
    ) -> std::result::Result<Device, Refusal> {
        let id = device.id.clone();
        let reserve: perch_store::DeviceRecordUpdate = Box::new(|_, current| {
            let bytes = current.ok_or_else(|| Rejection::not_found("the bootstrap was deleted"))?;
            changed_bootstrap(&bytes, |b| {
                if b.provisioned >= b.device_quota {
                    return Err(Rejection::new(ErrorCode::ResourceExhausted, "quota"));
                }
                b.provisioned += 1;
                b.decisions += 1;
                Ok(())
            })
            .map(Some)
        });
        let mut stored = decision.clone();
        let registry_name = registry.clone();
        let write_decision: perch_store::DeviceRecordUpdate = Box::new(move |device, _| {
            allow(&mut stored, &registry_name, device);
            serde_json::to_vec(&stored)
                .map(Some)
                .map_err(|e| Rejection::new(ErrorCode::Internal, e.to_string()))
        });
        let records = vec![
            (
                RecordKind::Bootstrap,
                bootstrap_key(registry, &decision.bootstrap),
                reserve,
            ),
            (
                RecordKind::Decision,
                decision_key(registry, decision),
                write_decision,
            ),
        ];
        self.registry
            .create_device_with_records(registry, device, records)
            .await
            .map_err(|e| match e.code() {
                ErrorCode::ResourceExhausted => quota_exceeded(&decision.bootstrap, b.device_quota),
                ErrorCode::NotFound => bootstrap_gone(&decision.bootstrap),
                ErrorCode::AlreadyExists => (
                    Reason::AlreadyRegistered,
                    format!("device `{id}` is already registered"),
                ),
                ErrorCode::InvalidArgument => (Reason::InvalidPublicKey, e.to_string()),
                _ => internal(e),
            })
    }

    /// Everything a request's checks read, from one snapshot of the records.
    async fn snapshot(
        &self,
        registry: &RegistryName,
        bootstrap_id: &str,
        claims: &ClaimValues<'_>,
    ) -> Result<Snapshot> {
        let mut keys = vec![
            (RecordKind::Bootstrap, bootstrap_key(registry, bootstrap_id)),
            (RecordKind::Settings, registry.to_string()),
            (RecordKind::Approval, approval_key(registry, claims[2].1)),
        ];
        for list in [PolicyList::Deny, PolicyList::Allow] {
            for (kind, value) in claims {
                // An empty claim matches nothing: look up a key no entry can have.
                let key = if value.is_empty() {
                    format!("{registry}/-")
                } else {
                    entry_key(registry, list, *kind, value)
                };
                keys.push((RecordKind::PolicyEntry, key));
            }
        }
        let allow_prefix = format!("{registry}/allow/");
        let (values, has_allowlist) = tokio::try_join!(
            self.store().get_records(keys),
            self.store()
                .list_records(RecordKind::PolicyEntry, &allow_prefix, 1),
        )?;
        let mut values = values.into_iter();
        let mut next = || values.next().flatten();
        let bootstrap = next().map(|b| decode(&b)).transpose()?;
        let webhook = next().map(|b| decode(&b)).transpose()?.unwrap_or_default();
        let approval = next().map(|b| decode(&b)).transpose()?;
        let mut entries = || -> Result<[Option<PolicyEntry>; 4]> {
            Ok([
                next().map(|b| decode(&b)).transpose()?,
                next().map(|b| decode(&b)).transpose()?,
                next().map(|b| decode(&b)).transpose()?,
                next().map(|b| decode(&b)).transpose()?,
            ])
        };
        let denied = entries()?;
        let allowed = entries()?;
        Ok(Snapshot {
            bootstrap,
            webhook,
            approval,
            denied,
            allowed,
            has_allowlist: !has_allowlist.is_empty(),
        })
    }

    /// Replaces an existing device's credentials with a newly provisioned one and records who
    /// provisioned it with which key (so a retry of this request is recognised as a repeat).
    pub(super) async fn rotate(
        &self,
        name: &DeviceName,
        credential: DeviceCredential,
        provisioned: BTreeMap<String, String>,
        mut metadata: BTreeMap<String, String>,
    ) -> std::result::Result<Device, Refusal> {
        metadata.extend(provisioned);
        let patch = DevicePatch {
            credentials: vec![credential],
            metadata,
            ..Default::default()
        };
        self.registry
            .update_device(
                name,
                patch,
                &["credentials".to_owned(), "metadata".to_owned()],
            )
            .await
            .map_err(|e| (Reason::Internal, e.to_string()))
    }

    /// A certificate from Perch's CA for a CSR request's key (`key_pem`, taken from the CSR whose
    /// signature `request_credential` verified); None for a request that sent a bare public key.
    pub(super) fn certificate_for(
        &self,
        request: &ProvisionRequest,
        key_pem: &str,
        id: &DeviceId,
    ) -> std::result::Result<Option<String>, Refusal> {
        match (&request.csr, self.registry.certificate_issuer()) {
            (Some(_), Some(issuer)) => issuer
                .issue(key_pem, id.as_str())
                .map(Some)
                .map_err(|e| (Reason::InvalidCsr, e)),
            _ => Ok(None),
        }
    }
}
