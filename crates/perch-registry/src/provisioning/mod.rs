//! Fleet provisioning (docs/provisioning.md): bootstrap credentials that may only ask for
//! device credentials, allow/deny lists, and the validation that turns a request into a
//! registered device or a refusal with a machine-readable reason. Decisions are stored with
//! bounded claims, at most a cap of refusals per bootstrap, and purged after a retention.
//!
//! Owns the rules and their limits; the device protocol lives in the bridge, the admin
//! surface in `api::provisioning_rest`.

pub mod model;

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use perch_core::model::{Device, DeviceCredential, PublicKeyFormat};
use perch_core::{DeviceId, DeviceName, DeviceRef, ErrorCode, RegistryName, Rejection};
use perch_store::{RecordKind, RecordUpdate, RegistryStore};
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;

use self::model::{
    Approval, ApprovalState, Bootstrap, Decision, EntryKind, PolicyEntry, PolicyList,
    ProvisionRequest, Reason, ReprovisionPolicy, Webhook, WebhookOnError,
};
use crate::auth::{AuthError, verify_device_jwt};
use crate::{DevicePatch, RegistryService, Result, keys};

/// Devices one bootstrap may provision when its creator sets no quota (finite by default).
pub const DEFAULT_DEVICE_QUOTA: u64 = 10_000;
/// Most decisions one list call returns.
pub const DECISIONS_LIST_MAX: usize = 1000;
/// Decision records read per store call while `list_decisions` filters its way back in time.
const DECISIONS_PAGE: usize = 512;
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

/// DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1), before the point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A fresh P-256 key pair: (private key PKCS#8 PEM, public key PEM).
pub fn generate_p256_key_pair() -> Result<(String, String)> {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let internal = || Rejection::new(ErrorCode::Internal, "could not generate a P-256 key pair");
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| internal())?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| internal())?;
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    Ok((pem("PRIVATE KEY", pkcs8.as_ref()), pem("PUBLIC KEY", &spki)))
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    rest.is_empty()
}

fn bootstrap_key(registry: &RegistryName, id: &str) -> String {
    format!("{registry}/bootstraps/{id}")
}

fn entry_key(registry: &RegistryName, list: PolicyList, kind: EntryKind, value: &str) -> String {
    let l = match list {
        PolicyList::Allow => "allow",
        PolicyList::Deny => "deny",
    };
    format!("{registry}/{l}/{}/{value}", kind.as_str())
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Rejection::new(ErrorCode::Internal, e.to_string()).into())
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| {
        Rejection::new(
            ErrorCode::Internal,
            format!("corrupt provisioning record: {e}"),
        )
        .into()
    })
}

/// A stored bootstrap's bytes after `change`: the read-modify-write every bootstrap update is.
fn changed_bootstrap(
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
fn bump_bootstrap(bump: impl FnOnce(&mut Bootstrap) + Send + 'static) -> RecordUpdate {
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
fn put(bytes: Vec<u8>) -> RecordUpdate {
    Box::new(move |_| Ok(Some(bytes)))
}

/// The key a request brings, parsed: credential to register and its fingerprint.
fn request_credential(
    request: &ProvisionRequest,
) -> std::result::Result<(DeviceCredential, String), (Reason, String)> {
    let (format, key_pem) = match (&request.public_key, &request.csr) {
        (Some(k), None) => (k.format.format(), k.key.clone()),
        (None, Some(csr)) => {
            let (_, block) = x509_parser::pem::parse_x509_pem(csr.trim().as_bytes())
                .map_err(|_| (Reason::InvalidCsr, "the CSR is not PEM".to_owned()))?;
            let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(
                &block.contents,
            )
            .map_err(|_| {
                (
                    Reason::InvalidCsr,
                    "the CSR is not a valid PKCS#10 request".to_owned(),
                )
            })?;
            req.verify_signature().map_err(|_| {
                (
                    Reason::InvalidCsr,
                    "the CSR's signature does not verify".to_owned(),
                )
            })?;
            let spki = &req.certification_request_info.subject_pki;
            let rsa =
                spki.algorithm.algorithm == x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
            let format = if rsa {
                PublicKeyFormat::RsaPem
            } else {
                PublicKeyFormat::Es256Pem
            };
            (format, pem("PUBLIC KEY", spki.raw))
        }
        _ => {
            return Err((
                Reason::InvalidRequest,
                "send exactly one of public_key or csr".to_owned(),
            ));
        }
    };
    let parsed = keys::parse_device_key(format, &key_pem)
        .map_err(|r| (Reason::InvalidPublicKey, r.message))?;
    let fingerprint = Sha256::digest(&parsed.public_key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((
        DeviceCredential {
            format,
            key: key_pem,
            expiration_time: None,
        },
        fingerprint,
    ))
}

/// Fleet provisioning on top of the registry.
#[derive(Debug, Clone)]
pub struct ProvisioningService {
    registry: RegistryService,
    http: reqwest::Client,
    /// Token buckets per bootstrap: (tokens, last refill). One service per process shares them.
    limiter: Arc<std::sync::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>>,
}

impl ProvisioningService {
    pub fn new(registry: RegistryService) -> ProvisioningService {
        // Webhook URLs are operator-trusted, but a redirect is never followed: the operator named
        // the host that decides (a 3xx is answered WEBHOOK_ERROR).
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        ProvisioningService {
            registry,
            http,
            limiter: Arc::default(),
        }
    }

    /// Takes one provisioning token of a bootstrap; false when it is over its rate.
    fn take_token(&self, b: &Bootstrap) -> bool {
        let rate = f64::from(if b.max_provisions_per_second == 0 {
            DEFAULT_PROVISIONS_PER_SECOND
        } else {
            b.max_provisions_per_second
        });
        let now = std::time::Instant::now();
        let Ok(mut buckets) = self.limiter.lock() else {
            return true;
        };
        let bucket = buckets
            .entry(format!("{}/{}", b.registry, b.id))
            .or_insert((rate, now));
        bucket.0 = (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * rate).min(rate);
        bucket.1 = now;
        if bucket.0 < 1.0 {
            return false;
        }
        bucket.0 -= 1.0;
        true
    }

    // ----- webhook -----

    /// Sets (or, with an empty URL, clears) the registry's provisioning webhook.
    pub async fn set_webhook(
        &self,
        registry: &RegistryName,
        mut webhook: Webhook,
    ) -> Result<Webhook> {
        self.registry.get_registry(registry).await?;
        let key = format!("{registry}");
        if webhook.url.is_empty() {
            self.store()
                .delete_record(RecordKind::Settings, &key)
                .await?;
            return Ok(Webhook::default());
        }
        if !(webhook.url.starts_with("http://") || webhook.url.starts_with("https://")) {
            return Err(Rejection::invalid_argument(format!(
                "the webhook url must be http:// or https://, got '{}'",
                webhook.url
            ))
            .into());
        }
        if webhook.timeout_ms == 0 {
            webhook.timeout_ms = WEBHOOK_TIMEOUT_DEFAULT_MS;
        }
        if webhook.timeout_ms > WEBHOOK_TIMEOUT_MAX_MS {
            return Err(Rejection::invalid_argument(format!(
                "the webhook timeout is at most {WEBHOOK_TIMEOUT_MAX_MS} ms"
            ))
            .into());
        }
        self.store()
            .put_record(RecordKind::Settings, &key, encode(&webhook)?, false)
            .await?;
        Ok(webhook)
    }

    pub async fn get_webhook(&self, registry: &RegistryName) -> Result<Webhook> {
        match self
            .store()
            .get_record(RecordKind::Settings, &registry.to_string())
            .await?
        {
            Some(b) => decode(&b),
            None => Ok(Webhook::default()),
        }
    }

    /// Asks the operator's webhook; `Err` is the refusal.
    async fn ask_webhook(
        &self,
        webhook: &Webhook,
        b: &Bootstrap,
        request: &ProvisionRequest,
        fingerprint: &str,
    ) -> std::result::Result<(), (Reason, String)> {
        let body = serde_json::json!({
            "registry": b.registry,
            "bootstrap": b.id,
            "lot": b.lot,
            "claims": request.claims,
            "key_fingerprint": fingerprint,
        });
        let timeout = std::time::Duration::from_millis(webhook.timeout_ms.max(1));
        let on_error = |reason: Reason, message: String| match webhook.on_error {
            WebhookOnError::Allow => Ok(()),
            WebhookOnError::Deny => Err((reason, message)),
        };
        let response = match self
            .http
            .post(&webhook.url)
            .timeout(timeout)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return on_error(
                    Reason::WebhookTimeout,
                    format!(
                        "the webhook did not answer within {} ms",
                        webhook.timeout_ms
                    ),
                );
            }
            Err(e) => {
                return on_error(
                    Reason::WebhookError,
                    format!("the webhook could not be reached: {e}"),
                );
            }
        };
        if response.status().is_redirection() {
            // A misconfiguration, not an outage: refused even with `onError: ALLOW`.
            let to = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("nowhere");
            return Err((
                Reason::WebhookError,
                format!(
                    "the webhook answered HTTP {} (a redirect to `{}`); redirects are not followed: set the webhook url to the final address",
                    response.status(),
                    truncated(to, 256)
                ),
            ));
        }
        if !response.status().is_success() {
            return on_error(
                Reason::WebhookError,
                format!("the webhook answered HTTP {}", response.status()),
            );
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            allow: bool,
            #[serde(default)]
            reason: String,
        }
        match tokio::time::timeout(timeout, response.json::<Answer>()).await {
            Ok(Ok(a)) if a.allow => Ok(()),
            Ok(Ok(a)) => Err((
                Reason::WebhookDenied,
                if a.reason.is_empty() {
                    "the webhook said no".into()
                } else {
                    format!(
                        "the webhook said no: {}",
                        truncated(&a.reason, WEBHOOK_REASON_MAX_BYTES)
                    )
                },
            )),
            Ok(Err(e)) => on_error(
                Reason::WebhookError,
                format!("the webhook's answer is not {{\"allow\": bool}}: {e}"),
            ),
            Err(_) => on_error(
                Reason::WebhookTimeout,
                format!(
                    "the webhook did not answer within {} ms",
                    webhook.timeout_ms
                ),
            ),
        }
    }

    fn store(&self) -> &Arc<dyn RegistryStore> {
        self.registry.store()
    }

    // ----- bootstraps -----

    /// Creates a bootstrap credential. Without a public key Perch makes the key pair and returns
    /// the private key (PEM) this once.
    pub async fn create_bootstrap(
        &self,
        registry: &RegistryName,
        mut b: Bootstrap,
    ) -> Result<(Bootstrap, Option<String>)> {
        self.registry.get_registry(registry).await?;
        if !perch_core::ids::is_valid_id(&b.id) {
            return Err(Rejection::invalid_argument(format!(
                "the bootstrap id '{}' is invalid; ids are 3 to 255 characters of letters, digits and -._+~%, starting with a letter",
                b.id
            ))
            .into());
        }
        let private = if b.public_key.is_empty() {
            let (private, public) = generate_p256_key_pair()?;
            b.public_key = public;
            b.format = model::PublicKeyFormatName::Es256Pem;
            Some(private)
        } else {
            keys::parse_device_key(b.format.format(), &b.public_key)
                .map_err(|r| Rejection::invalid_argument(format!("publicKey: {}", r.message)))?;
            None
        };
        b.registry = registry.to_string();
        if b.device_quota == 0 {
            b.device_quota = DEFAULT_DEVICE_QUOTA;
        }
        b.provisioned = 0;
        b.refused = 0;
        b.decisions = 0;
        b.enabled = true;
        b.create_time = self.registry.clock().now();
        self.store()
            .put_record(
                RecordKind::Bootstrap,
                &bootstrap_key(registry, &b.id),
                encode(&b)?,
                true,
            )
            .await?;
        Ok((b, private))
    }

    pub async fn get_bootstrap(&self, registry: &RegistryName, id: &str) -> Result<Bootstrap> {
        match self
            .store()
            .get_record(RecordKind::Bootstrap, &bootstrap_key(registry, id))
            .await?
        {
            Some(bytes) => decode(&bytes),
            None => Err(Rejection::not_found(format!(
                "bootstrap credential `{id}` does not exist in `{registry}`"
            ))
            .into()),
        }
    }

    pub async fn list_bootstraps(&self, registry: &RegistryName) -> Result<Vec<Bootstrap>> {
        let prefix = format!("{registry}/bootstraps/");
        self.store()
            .list_records(RecordKind::Bootstrap, &prefix, usize::MAX)
            .await?
            .iter()
            .map(|(_, v)| decode(v))
            .collect()
    }

    /// Enables or disables a bootstrap; disabling stops new provisioning, nothing else.
    pub async fn set_bootstrap_enabled(
        &self,
        registry: &RegistryName,
        id: &str,
        enabled: bool,
    ) -> Result<Bootstrap> {
        let id_owned = id.to_owned();
        let update = Box::new(move |current: Option<Vec<u8>>| {
            let bytes = current.ok_or_else(|| {
                Rejection::not_found(format!("bootstrap credential `{id_owned}` does not exist"))
            })?;
            changed_bootstrap(&bytes, |b| {
                b.enabled = enabled;
                Ok(())
            })
            .map(Some)
        });
        let written = self
            .store()
            .update_record(RecordKind::Bootstrap, &bootstrap_key(registry, id), update)
            .await?;
        decode(&written.unwrap_or_default())
    }

    pub async fn delete_bootstrap(&self, registry: &RegistryName, id: &str) -> Result<()> {
        if !self
            .store()
            .delete_record(RecordKind::Bootstrap, &bootstrap_key(registry, id))
            .await?
        {
            return Err(Rejection::not_found(format!(
                "bootstrap credential `{id}` does not exist in `{registry}`"
            ))
            .into());
        }
        Ok(())
    }

    /// Checks a bootstrap connection's JWT against the bootstrap key. Disabled or expired
    /// bootstraps still authenticate: their requests are refused with a reason the device sees.
    pub async fn authenticate(
        &self,
        registry: &RegistryName,
        id: &str,
        token: &str,
        now: DateTime<Utc>,
    ) -> std::result::Result<(Bootstrap, DateTime<Utc>), AuthError> {
        let b = self
            .get_bootstrap(registry, id)
            .await
            .map_err(|_| AuthError::NoUsableCredential)?;
        let credential = DeviceCredential {
            format: b.format.format(),
            key: b.public_key.clone(),
            expiration_time: None,
        };
        let token = verify_device_jwt(token, &registry.project, &[credential], now)?;
        Ok((b, token.expires_at))
    }

    // ----- policy lists -----

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
        let removed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let deletes = entries
            .iter()
            .map(|e| {
                let removed = removed.clone();
                let delete: RecordUpdate = Box::new(move |current| {
                    if current.is_some() {
                        removed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        Ok(removed.load(std::sync::atomic::Ordering::Relaxed))
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
                .list_devices(registry, after.clone(), 500, Box::new(|_| true))
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for d in &page {
                let hit = entries.iter().any(|e| match e.kind {
                    EntryKind::DeviceId => d.id.as_str() == e.value,
                    EntryKind::Serial => d.metadata.get("serial") == Some(&e.value),
                    EntryKind::Mac => d
                        .metadata
                        .get("mac")
                        .is_some_and(|m| m.eq_ignore_ascii_case(&e.value)),
                    EntryKind::KeyFingerprint => d.metadata.get("keyFingerprint") == Some(&e.value),
                });
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
            if page.len() < 500 {
                break;
            }
        }
        Ok(())
    }

    // ----- decisions -----

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

    /// A new decision's record key: registry, then time, so a registry's decisions list in order.
    fn decision_key(registry: &RegistryName, d: &Decision) -> String {
        let nanos = d.time.timestamp_nanos_opt().unwrap_or_default();
        format!("{registry}/{nanos:020}-{:016x}", rand::random::<u64>())
    }

    /// Stores a decision and counts it on its bootstrap (`bump`, and its `decisions`), in one
    /// commit. A decision that changed no device (`Keep::UnderCap`: a refusal or a repeat) is
    /// stored only while the bootstrap holds fewer than the cap; past it, and when the bootstrap
    /// is gone, only the counters move. So a bootstrap cannot fill the disk with refusals.
    async fn store_decision(
        &self,
        registry: &RegistryName,
        d: &Decision,
        bump: fn(&mut Bootstrap),
        keep: Keep,
    ) -> Result<()> {
        let cap = self.options().decisions_per_bootstrap;
        let stored = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let count = {
            let stored = stored.clone();
            bump_bootstrap(move |b| {
                bump(b);
                if keep == Keep::Always || b.decisions < cap {
                    b.decisions += 1;
                    stored.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            })
        };
        let bytes = encode(d)?;
        let write: RecordUpdate = Box::new(move |_| {
            Ok(stored
                .load(std::sync::atomic::Ordering::Relaxed)
                .then_some(bytes))
        });
        self.store()
            .update_records(vec![
                (
                    RecordKind::Bootstrap,
                    bootstrap_key(registry, &d.bootstrap),
                    count,
                ),
                (RecordKind::Decision, Self::decision_key(registry, d), write),
            ])
            .await?;
        Ok(())
    }

    fn options(&self) -> &ProvisioningOptions {
        &self.registry.options().provisioning
    }

    // ----- the request -----

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
        let mut decision = Decision {
            time: now,
            registry: registry.to_string(),
            bootstrap: bootstrap_id.to_owned(),
            request_id: truncated(&request.request_id, REQUEST_ID_MAX_BYTES).to_owned(),
            claims: bounded_claims(&request.claims),
            decision: "DENIED".into(),
            reason: None,
            message: String::new(),
            rule: String::new(),
            key_fingerprint: String::new(),
            num_id: None,
            name: None,
            certificate: None,
            private_key: None,
        };
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

    /// The first check, before anything is stored: the bootstrap exists and is under its rate
    /// (every request takes a token, refusals and repeats included).
    async fn admit(
        &self,
        registry: &RegistryName,
        bootstrap_id: &str,
    ) -> Result<std::result::Result<(), (Reason, String)>> {
        let b = match self.get_bootstrap(registry, bootstrap_id).await {
            Ok(b) => b,
            Err(e) if e.code() == ErrorCode::NotFound => {
                return Ok(Err((
                    Reason::BootstrapDisabled,
                    format!("bootstrap `{bootstrap_id}` no longer exists"),
                )));
            }
            Err(e) => return Err(e),
        };
        if !self.take_token(&b) {
            return Ok(Err((
                Reason::RateLimited,
                format!(
                    "bootstrap `{bootstrap_id}` is provisioning faster than it may; retry shortly"
                ),
            )));
        }
        Ok(Ok(()))
    }

    async fn evaluate(
        &self,
        registry: &RegistryName,
        bootstrap_id: &str,
        request: &ProvisionRequest,
        now: DateTime<Utc>,
        decision: &mut Decision,
    ) -> std::result::Result<Allowed, (Reason, String)> {
        let internal = |e: crate::Error| (Reason::Internal, e.to_string());
        // The request's own key first (pure computation), so that one snapshot can answer
        // every lookup its claims need; its errors still count only after the bootstrap's.
        let generated;
        let request = match request.generate_key.as_deref() {
            Some("ES256") if request.public_key.is_none() && request.csr.is_none() => {
                let (private, public) =
                    generate_p256_key_pair().map_err(|e| (Reason::Internal, e.to_string()))?;
                decision.private_key = Some(private);
                generated = ProvisionRequest {
                    public_key: Some(model::RequestKey {
                        format: model::PublicKeyFormatName::Es256Pem,
                        key: public,
                    }),
                    ..request.clone()
                };
                &generated
            }
            _ => request,
        };
        let parsed = request_credential(request);
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

        let b = snapshot.bootstrap.ok_or_else(|| {
            (
                Reason::BootstrapDisabled,
                format!("bootstrap `{bootstrap_id}` no longer exists"),
            )
        })?;
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
        let quota_exceeded = || {
            (
                Reason::QuotaExceeded,
                format!(
                    "bootstrap `{bootstrap_id}` has used its quota of {} devices",
                    b.device_quota
                ),
            )
        };
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
        // A repeat of an allowed request (its answer was lost on the way) is answered again, even
        // over quota: retries are always safe.
        let repeat = existing.as_ref().is_some_and(|d| {
            d.metadata.get("provisionedBy") == Some(&b.id)
                && !fingerprint.is_empty()
                && d.metadata.get("keyFingerprint") == Some(&fingerprint)
                && !d.blocked
        });
        if b.provisioned >= b.device_quota && !repeat {
            return Err(quota_exceeded());
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
        let (mut credential, fingerprint) = parsed?;
        decision.key_fingerprint = fingerprint.clone();
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
        if let Some(existing) = existing.as_ref().filter(|_| repeat) {
            decision.rule = "repeat of an allowed request".into();
            decision.certificate = self.certificate_for(request, &credential.key, &existing.id)?;
            return Ok(Allowed::Repeat(existing.clone()));
        }
        if let Some(existing) = &existing {
            // Re-provisioning (ROTATE or REQUIRE_APPROVAL) reaches only a device this bootstrap
            // provisioned for the same serial: never one an operator made, nor another batch's.
            if b.reprovision_policy == ReprovisionPolicy::Deny {
                return Err((
                    Reason::AlreadyRegistered,
                    format!("device `{id}` is already registered"),
                ));
            }
            if !provisioned_for(existing, &b.id, &request.claims.serial) {
                return Err((
                    Reason::AlreadyRegistered,
                    format!(
                        "device `{id}` is already registered and was not provisioned by bootstrap `{}` for this serial; only such a device may be re-provisioned",
                        b.id
                    ),
                ));
            }
        }
        if !snapshot.webhook.url.is_empty() {
            self.ask_webhook(&snapshot.webhook, &b, request, &fingerprint)
                .await?;
            decision.rule = format!("webhook {}", snapshot.webhook.url);
        }
        if existing.is_some() && b.reprovision_policy == ReprovisionPolicy::RequireApproval {
            return Err(self
                .hold_for_approval(registry, &b, request, &fingerprint, snapshot.approval)
                .await);
        }
        // Only now, with every check passed, may Perch's CA sign the CSR; the certificate then
        // becomes the device's credential.
        if let Some(certificate) = self.certificate_for(request, &credential.key, &id)? {
            credential = certificate_credential(&credential, certificate.clone());
            decision.certificate = Some(certificate);
        }
        let provisioned = provisioned_metadata(&b.id, &b.lot, &request.claims, &fingerprint);
        if let Some(existing) = existing {
            // Rotation: the device keeps its id and numeric id and gets the new key.
            let device = self
                .rotate(&name, credential, provisioned, existing.metadata)
                .await?;
            return Ok(Allowed::Rotated(device));
        }
        let mut device = Device::new(id.clone(), 0);
        device.credentials = vec![credential];
        device.metadata = provisioned;
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
        self.registry
            .create_device_with_records(
                registry,
                device,
                vec![
                    (
                        RecordKind::Bootstrap,
                        bootstrap_key(registry, bootstrap_id),
                        reserve,
                    ),
                    (
                        RecordKind::Decision,
                        Self::decision_key(registry, decision),
                        write_decision,
                    ),
                ],
            )
            .await
            .map(Allowed::Stored)
            .map_err(|e| match e.code() {
                ErrorCode::ResourceExhausted => quota_exceeded(),
                ErrorCode::NotFound => (
                    Reason::BootstrapDisabled,
                    format!("bootstrap `{bootstrap_id}` no longer exists"),
                ),
                ErrorCode::AlreadyExists => (
                    Reason::AlreadyRegistered,
                    format!("device `{id}` is already registered"),
                ),
                ErrorCode::InvalidArgument => (Reason::InvalidPublicKey, e.to_string()),
                _ => (Reason::Internal, e.to_string()),
            })
    }

    /// Everything a request's checks read, from one snapshot of the records.
    async fn snapshot(
        &self,
        registry: &RegistryName,
        bootstrap_id: &str,
        claims: &[(EntryKind, &str); 4],
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
    async fn rotate(
        &self,
        name: &DeviceName,
        credential: DeviceCredential,
        provisioned: BTreeMap<String, String>,
        mut metadata: BTreeMap<String, String>,
    ) -> std::result::Result<Device, (Reason, String)> {
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
    fn certificate_for(
        &self,
        request: &ProvisionRequest,
        key_pem: &str,
        id: &DeviceId,
    ) -> std::result::Result<Option<String>, (Reason, String)> {
        match (&request.csr, self.registry.certificate_issuer()) {
            (Some(_), Some(issuer)) => issuer
                .issue(key_pem, id.as_str())
                .map(Some)
                .map_err(|e| (Reason::InvalidCsr, e)),
            _ => Ok(None),
        }
    }

    // ----- approvals -----

    /// Holds a re-provisioning request for an operator and says why the device must wait.
    async fn hold_for_approval(
        &self,
        registry: &RegistryName,
        b: &Bootstrap,
        request: &ProvisionRequest,
        fingerprint: &str,
        current: Option<Approval>,
    ) -> (Reason, String) {
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
        if key_fingerprint.is_empty() {
            return Err(Rejection::invalid_argument(format!(
                "name the key you decide on: keyFingerprint, as `perch provision approvals list` shows it for device `{device_id}`"
            ))
            .into());
        }
        let key = approval_key(registry, device_id);
        let mut approval: Approval =
            match self.store().get_record(RecordKind::Approval, &key).await? {
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
        let now = self.registry.clock().now();
        let mut decision = Decision {
            time: now,
            registry: registry.to_string(),
            bootstrap: approval.bootstrap.clone(),
            request_id: String::new(),
            claims: approval.claims.clone(),
            decision: "DENIED".into(),
            reason: None,
            message: String::new(),
            rule: format!("operator {}", if approve { "approval" } else { "denial" }),
            key_fingerprint: approval.key_fingerprint.clone(),
            num_id: None,
            name: None,
            certificate: None,
            private_key: None,
        };
        if approve {
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
            allow(&mut decision, registry, &device);
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
                    Self::decision_key(registry, &decision),
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
}

/// What validation allowed: a new device whose decision was stored with it, or an existing one
/// whose decision is still to be stored: rotated to the new key, or a repeat (unchanged).
enum Allowed {
    Stored(Device),
    Rotated(Device),
    Repeat(Device),
}

/// Whether a decision is stored whatever the bootstrap's decision count (it changed a device),
/// or only under the cap (a refusal or a repeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Always,
    UnderCap,
}

/// Whether `device` was provisioned by bootstrap `bootstrap` for `serial` (a device without a
/// serial matches only a request without one): the only devices re-provisioning may change.
fn provisioned_for(device: &Device, bootstrap: &str, serial: &str) -> bool {
    device.metadata.get("provisionedBy").map(String::as_str) == Some(bootstrap)
        && device
            .metadata
            .get("serial")
            .map(String::as_str)
            .unwrap_or("")
            == serial
}

/// At most `max` bytes of `s`, cut on a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The claims as a decision stores them: a claim over its limit is dropped (the refusal's
/// message says which and how long it was).
fn bounded_claims(claims: &model::Claims) -> model::Claims {
    let keep = |v: &str, max: usize| {
        if v.len() <= max {
            v.to_owned()
        } else {
            String::new()
        }
    };
    model::Claims {
        serial: keep(&claims.serial, CLAIM_SERIAL_MAX_BYTES),
        mac: keep(&claims.mac, CLAIM_MAC_MAX_BYTES),
        device_id: keep(&claims.device_id, CLAIM_DEVICE_ID_MAX_BYTES),
    }
}

/// The first field of a request over its size limit, as a refusal message.
fn oversized(request: &ProvisionRequest) -> Option<String> {
    let key = request
        .public_key
        .as_ref()
        .map(|k| k.key.len())
        .unwrap_or(0);
    let csr = request.csr.as_ref().map(String::len).unwrap_or(0);
    [
        (
            "serial",
            request.claims.serial.len(),
            CLAIM_SERIAL_MAX_BYTES,
        ),
        ("mac", request.claims.mac.len(), CLAIM_MAC_MAX_BYTES),
        (
            "device_id",
            request.claims.device_id.len(),
            CLAIM_DEVICE_ID_MAX_BYTES,
        ),
        ("request_id", request.request_id.len(), REQUEST_ID_MAX_BYTES),
        ("public_key", key, REQUEST_KEY_MAX_BYTES),
        ("csr", csr, REQUEST_KEY_MAX_BYTES),
    ]
    .into_iter()
    .find(|(_, len, max)| len > max)
    .map(|(field, len, max)| format!("{field} is {len} bytes; at most {max} are accepted"))
}

/// The records a request's checks read, from one snapshot: bootstrap, webhook, approval, then
/// the deny and allow entries of the claims (serial, MAC, device id, key fingerprint).
struct Snapshot {
    bootstrap: Option<Bootstrap>,
    webhook: Webhook,
    approval: Option<Approval>,
    denied: [Option<PolicyEntry>; 4],
    allowed: [Option<PolicyEntry>; 4],
    has_allowlist: bool,
}

/// Marks a decision allowed for `device`.
fn allow(decision: &mut Decision, registry: &RegistryName, device: &Device) {
    decision.decision = "ALLOWED".into();
    decision.reason = None;
    decision.message = format!("device `{}` registered", device.id);
    decision.num_id = Some(device.num_id.to_string());
    decision.name = Some(registry.device_name(device.num_id));
    decision.claims.device_id = device.id.to_string();
}

/// The time (Unix nanoseconds) in a decision's key `{registry}/{nanos:020}-{random}`.
fn decision_key_nanos(key: &str) -> Option<i64> {
    let (_, tail) = key.rsplit_once('/')?;
    tail.split_once('-')?.0.parse().ok()
}

fn approval_key(registry: &RegistryName, device_id: &str) -> String {
    format!("{registry}/{device_id}")
}

/// The metadata a provisioned device carries: who provisioned it, with which key, and what it
/// claimed (the denylist matches on these later).
fn provisioned_metadata(
    bootstrap: &str,
    lot: &str,
    claims: &model::Claims,
    fingerprint: &str,
) -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::new();
    metadata.insert("provisionedBy".into(), bootstrap.to_owned());
    metadata.insert("keyFingerprint".into(), fingerprint.to_owned());
    for (k, v) in [
        ("lot", lot),
        ("serial", &claims.serial),
        ("mac", &claims.mac),
    ] {
        if !v.is_empty() {
            metadata.insert(k.into(), v.to_owned());
        }
    }
    metadata
}

/// The credential a CA-issued certificate makes, for the key type of `requested`.
fn certificate_credential(requested: &DeviceCredential, certificate: String) -> DeviceCredential {
    DeviceCredential {
        format: if requested.format.is_rsa() {
            PublicKeyFormat::RsaX509Pem
        } else {
            PublicKeyFormat::Es256X509Pem
        },
        key: certificate,
        expiration_time: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("", "anything", true),
            ("pi-*", "pi-0001", true),
            ("pi-*", "gw-0001", false),
            ("*-sensor", "a-sensor", true),
            ("lot7-*-pi", "lot7-x-y-pi", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_matches(p, t), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn generated_keys_parse_as_es256() {
        let (private, public) = generate_p256_key_pair().unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
        keys::parse_device_key(PublicKeyFormat::Es256Pem, &public).unwrap();
    }

    #[test]
    fn oversized_claims_are_named_and_dropped_from_the_stored_claims() {
        let request = ProvisionRequest {
            claims: model::Claims {
                serial: "S".repeat(CLAIM_SERIAL_MAX_BYTES + 1),
                mac: "m".into(),
                device_id: "pi-1".into(),
            },
            ..Default::default()
        };
        assert_eq!(
            oversized(&request).unwrap(),
            "serial is 129 bytes; at most 128 are accepted"
        );
        let stored = bounded_claims(&request.claims);
        assert_eq!((stored.serial.as_str(), stored.mac.as_str()), ("", "m"));
        let csr = ProvisionRequest {
            csr: Some("x".repeat(REQUEST_KEY_MAX_BYTES + 1)),
            ..Default::default()
        };
        assert!(oversized(&csr).unwrap().starts_with("csr is"));
        assert!(oversized(&ProvisionRequest::default()).is_none());
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(
            decision_key_nanos("projects/p/x/00000000000000000042-ab"),
            Some(42)
        );
    }

    /// A registry service on a fresh embedded store with a hand-set clock, and its provisioning.
    async fn service(
        dir: &std::path::Path,
        cap: u64,
    ) -> (ProvisioningService, Arc<perch_core::ManualClock>) {
        let store =
            perch_store::embedded::EmbeddedRegistryStore::open(&dir.join("r.redb")).unwrap();
        let clock = Arc::new(perch_core::ManualClock::new(Utc::now()));
        let options = crate::RegistryServiceOptions {
            provisioning: ProvisioningOptions {
                decisions_per_bootstrap: cap,
                decision_retention: None,
            },
            ..Default::default()
        };
        let registry = RegistryService::new(Arc::new(store), clock.clone(), options);
        // The webhook client needs the process's TLS provider, as `perch serve` installs it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        (ProvisioningService::new(registry), clock)
    }

    async fn registry_with_bootstrap(p: &ProvisioningService, id: &str) -> RegistryName {
        let location = perch_core::LocationName {
            project: "p".into(),
            location: "us-central1".into(),
        };
        let registry = perch_core::model::Registry {
            project: String::new(),
            location: String::new(),
            id: id.parse().unwrap(),
            event_notification_configs: Vec::new(),
            state_notification_topic: String::new(),
            mqtt_state: Default::default(),
            http_state: Default::default(),
            log_level: Default::default(),
            credentials: Vec::new(),
        };
        p.registry
            .create_registry(&location, registry)
            .await
            .unwrap();
        let name = RegistryName::parse(
            "parent",
            &format!("projects/p/locations/us-central1/registries/{id}"),
        )
        .unwrap();
        let bootstrap = Bootstrap {
            id: "lot-1".into(),
            ..Default::default()
        };
        p.create_bootstrap(&name, bootstrap).await.unwrap();
        p.set_bootstrap_enabled(&name, "lot-1", false)
            .await
            .unwrap();
        name
    }

    /// A request a disabled bootstrap refuses.
    fn refused_request() -> ProvisionRequest {
        ProvisionRequest {
            request_id: "r".into(),
            claims: model::Claims {
                serial: "s".into(),
                device_id: "pi-1".into(),
                ..Default::default()
            },
            generate_key: Some("ES256".into()),
            ..Default::default()
        }
    }

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

    #[test]
    fn requests_need_exactly_one_key() {
        let r = ProvisionRequest::default();
        assert_eq!(
            request_credential(&r).unwrap_err().0,
            Reason::InvalidRequest
        );
        let r = ProvisionRequest {
            csr: Some("garbage".into()),
            ..Default::default()
        };
        assert_eq!(request_credential(&r).unwrap_err().0, Reason::InvalidCsr);
    }
}

/// Runs a device's provisioning request body through every check that needs no store: the JSON
/// parse, the size limits, the key or CSR (PEM, PKCS#10 signature, key parse) and glob matching
/// of the requested id. For the fuzz target `fuzz/fuzz_targets/provision_request.rs`; requests
/// themselves go through `ProvisioningService::provision`.
#[doc(hidden)]
pub fn check_request_body(body: &[u8]) {
    let Ok(request) = serde_json::from_slice::<ProvisionRequest>(body) else {
        return;
    };
    let _ = bounded_claims(&request.claims);
    if oversized(&request).is_some() {
        return;
    }
    let _ = request_credential(&request);
    let _ = glob_matches("pi-*-*0", &request.claims.device_id);
    let _ = glob_matches(&request.claims.serial, &request.claims.device_id);
}
