//! Re-provisioning approvals (`REQUIRE_APPROVAL` bootstraps): holding a request for an
//! operator, listing the held requests, and an operator's decision on one, which re-keys the
//! device at once when approved.
//!
//! Owns the approval records; the checks that lead to one are `evaluate`'s.

use perch_core::{DeviceId, DeviceName, DeviceRef, ErrorCode, RegistryName, Rejection};
use perch_store::RecordKind;

use super::ProvisioningService;
use super::decisions::{allow, new_decision};
use super::model::{Approval, ApprovalState, Bootstrap, Decision, ProvisionRequest, Reason};
use super::records::{
    approval_key, bootstrap_key, bump_bootstrap, decision_key, decode, encode, put,
};
use super::request::{
    Refusal, certificate_credential, provisioned_for, provisioned_metadata, request_credential,
};
use crate::Result;

impl ProvisioningService {
    /// Holds a re-provisioning request for an operator and says why the device must wait.
    pub(super) async fn hold_for_approval(
        &self,
        registry: &RegistryName,
        b: &Bootstrap,
        request: &ProvisionRequest,
        fingerprint: &str,
        current: Option<Approval>,
    ) -> Refusal {
        let device = &request.claims.device_id;
        let pending = || {
            (
                Reason::PendingApproval,
                format!(
                    "re-provisioning device `{device}` waits for an operator's approval; retry later"
                ),
            )
        };
        if let Some(a) = current.filter(|a| a.key_fingerprint == fingerprint) {
            match a.state {
                ApprovalState::Denied => {
                    return (
                        Reason::ApprovalDenied,
                        format!(
                            "an operator refused to re-provision device `{device}` with this key"
                        ),
                    );
                }
                ApprovalState::Pending => return pending(),
                // Approved, yet the device no longer matches (blocked, or changed since): ask again.
                ApprovalState::Approved => {}
            }
        }
        let approval = Approval {
            registry: registry.to_string(),
            device_id: device.clone(),
            bootstrap: b.id.clone(),
            claims: request.claims.clone(),
            key_fingerprint: fingerprint.to_owned(),
            state: ApprovalState::Pending,
            request_time: self.registry.clock().now(),
            decide_time: None,
            public_key: request.public_key.clone(),
            csr: request.csr.clone(),
        };
        let stored = match encode(&approval) {
            Ok(bytes) => self
                .store()
                .put_record(
                    RecordKind::Approval,
                    &approval_key(registry, device),
                    bytes,
                    false,
                )
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => pending(),
            Err(e) => (Reason::Internal, e),
        }
    }

    /// Approvals of a registry, optionally only those in one state.
    pub async fn list_approvals(
        &self,
        registry: &RegistryName,
        state: Option<&str>,
    ) -> Result<Vec<Approval>> {
        let all = self
            .store()
            .list_records(RecordKind::Approval, &format!("{registry}/"), usize::MAX)
            .await?;
        let mut out = Vec::new();
        for (_, v) in &all {
            let a: Approval = decode(v)?;
            if state.is_none_or(|s| a.state.as_str() == s) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Decides a pending approval, which the operator names by device and key fingerprint: a
    /// newer request that replaced the key the operator saw makes this FAILED_PRECONDITION.
    /// Approving replaces the device's credential with the held key at once (a CSR is signed
    /// now) and stores an ALLOWED decision; the device's next retry is answered as a repeat.
    /// Denying makes retries with that key APPROVAL_DENIED.
    pub async fn decide_approval(
        &self,
        registry: &RegistryName,
        device_id: &str,
        key_fingerprint: &str,
        approve: bool,
    ) -> Result<Approval> {
        let (key, mut approval) = self
            .pending_approval(registry, device_id, key_fingerprint)
            .await?;
        let now = self.registry.clock().now();
        let mut decision = new_decision(
            now,
            registry,
            &approval.bootstrap,
            String::new(),
            approval.claims.clone(),
        );
        decision.rule = format!("operator {}", if approve { "approval" } else { "denial" });
        decision.key_fingerprint = approval.key_fingerprint.clone();
        if approve {
            self.reprovision_approved(registry, device_id, &approval, &mut decision)
                .await?;
            decision.message = format!("device `{device_id}` re-provisioned by an operator");
        } else {
            decision.reason = Some(Reason::ApprovalDenied);
            decision.message = format!("an operator refused to re-provision device `{device_id}`");
        }
        approval.state = if approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Denied
        };
        approval.decide_time = Some(now);
        self.store()
            .update_records(vec![
                (
                    RecordKind::Bootstrap,
                    bootstrap_key(registry, &approval.bootstrap),
                    bump_bootstrap(|b| b.decisions += 1),
                ),
                (RecordKind::Approval, key, put(encode(&approval)?)),
                (
                    RecordKind::Decision,
                    decision_key(registry, &decision),
                    put(encode(&decision)?),
                ),
            ])
            .await?;
        tracing::info!(
            registry = %registry, device = device_id, approved = approve,
            "re-provisioning approval decided"
        );
        Ok(approval)
    }

    /// The pending approval an operator names, with its record key; refused when there is none,
    /// it is decided already, or a newer request replaced the key the operator saw.
    async fn pending_approval(
        &self,
        registry: &RegistryName,
        device_id: &str,
        key_fingerprint: &str,
    ) -> Result<(String, Approval)> {
        if key_fingerprint.is_empty() {
            return Err(Rejection::invalid_argument(format!(
                "name the key you decide on: keyFingerprint, as `perch provision approvals list` shows it for device `{device_id}`"
            ))
            .into());
        }
        let key = approval_key(registry, device_id);
        let approval: Approval = match self.store().get_record(RecordKind::Approval, &key).await? {
            Some(bytes) => decode(&bytes)?,
            None => {
                return Err(Rejection::not_found(format!(
                    "no approval is pending for device `{device_id}` in `{registry}`"
                ))
                .into());
            }
        };
        if approval.state != ApprovalState::Pending {
            return Err(Rejection::failed_precondition(format!(
                "the approval for device `{device_id}` is already {}",
                approval.state.as_str()
            ))
            .into());
        }
        if approval.key_fingerprint != key_fingerprint {
            return Err(Rejection::failed_precondition(format!(
                "the approval for device `{device_id}` now holds key {}, not {key_fingerprint}: a newer request replaced it; list the approvals again and decide on that key",
                approval.key_fingerprint
            ))
            .into());
        }
        Ok((key, approval))
    }

    /// Approving: the held key (a CSR signed now) replaces the credential of the device the
    /// bootstrap provisioned, which must still be that device; `decision` is allowed for it.
    async fn reprovision_approved(
        &self,
        registry: &RegistryName,
        device_id: &str,
        approval: &Approval,
        decision: &mut Decision,
    ) -> Result<()> {
        let request = ProvisionRequest {
            claims: approval.claims.clone(),
            public_key: approval.public_key.clone(),
            csr: approval.csr.clone(),
            ..Default::default()
        };
        let id: DeviceId = device_id
            .parse()
            .map_err(|e: perch_core::IdError| Rejection::invalid_argument(e.to_string()))?;
        let (mut credential, fingerprint) =
            request_credential(&request).map_err(|(_, m)| Rejection::invalid_argument(m))?;
        if let Some(certificate) = self
            .certificate_for(&request, &credential.key, &id)
            .map_err(|(_, m)| Rejection::invalid_argument(m))?
        {
            credential = certificate_credential(&credential, certificate);
        }
        let name = DeviceName {
            registry: registry.clone(),
            device: DeviceRef::Id(id),
        };
        let existing = self.registry.get_device(&name).await?;
        if !provisioned_for(&existing, &approval.bootstrap, &approval.claims.serial) {
            return Err(Rejection::failed_precondition(format!(
                "device `{device_id}` is no longer the one bootstrap `{}` provisioned for this serial; deny this approval",
                approval.bootstrap
            ))
            .into());
        }
        let lot = existing.metadata.get("lot").cloned().unwrap_or_default();
        let provisioned =
            provisioned_metadata(&approval.bootstrap, &lot, &approval.claims, &fingerprint);
        let device = self
            .rotate(&name, credential, provisioned, existing.metadata)
            .await
            .map_err(|(_, m)| Rejection::new(ErrorCode::Internal, m))?;
        allow(decision, registry, &device);
        Ok(())
    }
}
