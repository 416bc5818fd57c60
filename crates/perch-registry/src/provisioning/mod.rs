//! Fleet provisioning (docs/provisioning.md): bootstrap credentials that may only ask for
//! device credentials, allow/deny lists, and the validation that turns a request into a
//! registered device or a refusal with a machine-readable reason. Decisions are stored with
//! bounded claims, at most a cap of refusals per bootstrap, and purged after a retention.
//!
//! Owns the rules and their limits (here), the service, and its parts: `bootstrap`
//! (credentials and their rate), `policy` (allow/deny lists), `webhook`, `evaluate` (a
//! request's checks in order), `checks` (those that read only the snapshot), `request` (those
//! that read only the request), `decisions`, `approvals`, `glob` and `records` (store keys and
//! encoding). The device protocol lives in the bridge, the admin surface in
//! `api::provisioning_rest`.

mod approvals;
mod bootstrap;
mod checks;
mod decisions;
mod evaluate;
mod glob;
pub mod model;
mod policy;
mod records;
mod request;
#[cfg(test)]
mod testing;
mod webhook;

use std::sync::Arc;

use perch_core::{ErrorCode, Rejection};
use perch_store::RegistryStore;

pub use self::request::check_request_body;
use crate::{RegistryService, Result};

/// Devices one bootstrap may provision when its creator sets no quota (finite by default).
pub const DEFAULT_DEVICE_QUOTA: u64 = 10_000;
/// Most decisions one list call returns.
pub const DECISIONS_LIST_MAX: usize = 1000;
/// Provisions per second a bootstrap may make when its creator sets no rate.
pub const DEFAULT_PROVISIONS_PER_SECOND: u32 = 5_000;
/// Webhook answer deadline when the operator sets none, and the most it may be set to.
pub const WEBHOOK_TIMEOUT_DEFAULT_MS: u64 = 2_000;
pub const WEBHOOK_TIMEOUT_MAX_MS: u64 = 30_000;
/// Longest webhook `reason` a stored decision's message keeps, in bytes (the rest is cut).
pub const WEBHOOK_REASON_MAX_BYTES: usize = 512;
/// Most policy entries one registry may hold.
pub const POLICY_ENTRIES_MAX: usize = 100_000;
/// Longest `serial` claim, in bytes; a longer one is INVALID_REQUEST and is not stored.
pub const CLAIM_SERIAL_MAX_BYTES: usize = 128;
/// Longest `mac` claim, in bytes (a MAC or EUI-64 in any spelling fits); longer: INVALID_REQUEST.
pub const CLAIM_MAC_MAX_BYTES: usize = 64;
/// Longest `device_id` claim, in bytes (the longest valid device id); longer: INVALID_REQUEST.
pub const CLAIM_DEVICE_ID_MAX_BYTES: usize = 255;
/// Longest `request_id` (the MQTT topic allows 64; the HTTP body is held to the same).
pub const REQUEST_ID_MAX_BYTES: usize = 64;
/// Longest public key or CSR PEM a request may bring (an RSA-4096 CSR is about 2 KB).
pub const REQUEST_KEY_MAX_BYTES: usize = 16 * 1024;
/// Decisions stored per bootstrap before its refusals and repeats stop being stored (they are
/// still answered and counted); `perch serve --provisioning-decisions-per-bootstrap`.
pub const DECISIONS_PER_BOOTSTRAP_DEFAULT: u64 = 10_000;
/// Days a decision is kept; `perch serve --provisioning-decision-retention-days` (0 = forever).
pub const DECISION_RETENTION_DAYS_DEFAULT: u32 = 90;
/// How often the retention purge runs (also once at startup).
pub const DECISION_PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Fleet provisioning's operator-tunable limits (`perch serve` flags).
#[derive(Debug, Clone)]
pub struct ProvisioningOptions {
    /// Decisions kept per bootstrap before refusals and repeats are no longer stored.
    pub decisions_per_bootstrap: u64,
    /// How long decisions are kept (None: forever).
    pub decision_retention: Option<std::time::Duration>,
}

impl Default for ProvisioningOptions {
    fn default() -> Self {
        ProvisioningOptions {
            decisions_per_bootstrap: DECISIONS_PER_BOOTSTRAP_DEFAULT,
            decision_retention: Some(std::time::Duration::from_secs(
                u64::from(DECISION_RETENTION_DAYS_DEFAULT) * 86_400,
            )),
        }
    }
}

/// A fresh P-256 key pair: (private key PKCS#8 PEM, public key PEM).
pub fn generate_p256_key_pair() -> Result<(String, String)> {
    let generated = perch_device::SigningKey::generate_es256()
        .map_err(|_| Rejection::new(ErrorCode::Internal, "could not generate a P-256 key pair"))?;
    Ok((generated.private_pem, generated.public_pem))
}

/// Fleet provisioning on top of the registry.
#[derive(Debug, Clone)]
pub struct ProvisioningService {
    registry: RegistryService,
    http: reqwest::Client,
    /// Token buckets per bootstrap. One service per process shares them.
    limiter: Arc<std::sync::Mutex<bootstrap::RateBuckets>>,
}

impl ProvisioningService {
    pub fn new(registry: RegistryService) -> ProvisioningService {
        ProvisioningService {
            registry,
            http: webhook::client(),
            limiter: Arc::default(),
        }
    }

    fn store(&self) -> &Arc<dyn RegistryStore> {
        self.registry.store()
    }
}

#[cfg(test)]
mod tests {
    use perch_core::model::PublicKeyFormat;

    use super::*;
    use crate::keys;

    #[test]
    fn generated_keys_parse_as_es256() {
        let (private, public) = generate_p256_key_pair().unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
        keys::parse_device_key(PublicKeyFormat::Es256Pem, &public).unwrap();
    }
}
