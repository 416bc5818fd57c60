//! Fleet provisioning (docs/provisioning.md): bootstrap credentials that may only ask for
//! device credentials, allow/deny lists, and the validation that turns a request into a
//! registered device or a refusal with a machine-readable reason. Every decision is stored.
//!
//! Owns the rules; the device protocol lives in the bridge, the admin surface in `api::rest`.

pub mod model;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use perch_core::model::{Device, DeviceCredential, PublicKeyFormat};
use perch_core::{DeviceId, DeviceName, DeviceRef, ErrorCode, RegistryName, Rejection};
use perch_store::{RecordKind, RegistryStore};
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;

use self::model::{
    Bootstrap, Decision, EntryKind, PolicyEntry, PolicyList, ProvisionRequest, Reason,
    ReprovisionPolicy, Webhook, WebhookOnError,
};
use crate::auth::{AuthError, verify_device_jwt};
use crate::{DevicePatch, RegistryService, Result, keys};

/// Devices one bootstrap may provision when its creator sets no quota (finite by default).
pub const DEFAULT_DEVICE_QUOTA: u64 = 10_000;
/// Most decisions one list call returns.
pub const DECISIONS_LIST_MAX: usize = 1000;
/// Provisions per second a bootstrap may make when its creator sets no rate.
pub const DEFAULT_PROVISIONS_PER_SECOND: u32 = 5_000;
/// Webhook answer deadline when the operator sets none, and the most it may be set to.
pub const WEBHOOK_TIMEOUT_DEFAULT_MS: u64 = 2_000;
pub const WEBHOOK_TIMEOUT_MAX_MS: u64 = 30_000;
/// Most policy entries one registry may hold.
pub const POLICY_ENTRIES_MAX: usize = 100_000;

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
        let http = reqwest::Client::builder()
            .no_proxy()
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
                    format!("the webhook said no: {}", a.reason)
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
            let mut b: Bootstrap = serde_json::from_slice(&bytes)
                .map_err(|e| Rejection::new(ErrorCode::Internal, e.to_string()))?;
            b.enabled = enabled;
            serde_json::to_vec(&b)
                .map(Some)
                .map_err(|e| Rejection::new(ErrorCode::Internal, e.to_string()))
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
        for e in &entries {
            self.store()
                .put_record(
                    RecordKind::PolicyEntry,
                    &entry_key(registry, e.list, e.kind, &e.value),
                    encode(e)?,
                    false,
                )
                .await?;
        }
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
        let mut removed = 0;
        for e in entries {
            if self
                .store()
                .delete_record(
                    RecordKind::PolicyEntry,
                    &entry_key(registry, e.list, e.kind, &e.value),
                )
                .await?
            {
                removed += 1;
            }
        }
        Ok(removed)
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

    async fn entry(
        &self,
        registry: &RegistryName,
        list: PolicyList,
        kind: EntryKind,
        value: &str,
    ) -> Result<Option<PolicyEntry>> {
        if value.is_empty() {
            return Ok(None);
        }
        match self
            .store()
            .get_record(
                RecordKind::PolicyEntry,
                &entry_key(registry, list, kind, value),
            )
            .await?
        {
            Some(b) => Ok(Some(decode(&b)?)),
            None => Ok(None),
        }
    }

    // ----- decisions -----

    pub async fn list_decisions(
        &self,
        registry: &RegistryName,
        bootstrap: Option<&str>,
        reason: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Decision>> {
        let all = self
            .store()
            .list_records(RecordKind::Decision, &format!("{registry}/"), usize::MAX)
            .await?;
        let mut out: Vec<Decision> = Vec::new();
        for (_, v) in all.iter().rev() {
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
            if out.len() >= limit.clamp(1, DECISIONS_LIST_MAX) {
                break;
            }
        }
        Ok(out)
    }

    async fn record(&self, registry: &RegistryName, d: &Decision) -> Result<()> {
        let nanos = d.time.timestamp_nanos_opt().unwrap_or_default();
        let key = format!("{registry}/{nanos:020}-{:016x}", rand::random::<u64>());
        self.store()
            .put_record(RecordKind::Decision, &key, encode(d)?, false)
            .await?;
        Ok(())
    }

    // ----- the request -----

    /// Validates a request in order (bootstrap → request → denylist → allowlist → existing
    /// device) and, when allowed, registers the device with its own credential. Always returns
    /// the decision, which is also stored.
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
            request_id: request.request_id.clone(),
            claims: request.claims.clone(),
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
        let outcome = self
            .evaluate(registry, bootstrap_id, &request, now, &mut decision)
            .await;
        match outcome {
            Ok(device) => {
                decision.decision = "ALLOWED".into();
                decision.message = format!("device `{}` registered", device.id);
                decision.num_id = Some(device.num_id.to_string());
                decision.name = Some(registry.device_name(device.num_id));
                decision.claims.device_id = device.id.to_string();
            }
            Err((reason, message)) => {
                decision.private_key = None;
                decision.certificate = None;
                decision.reason = Some(reason);
                decision.message = message;
                let id = bootstrap_id.to_owned();
                let update = Box::new(move |current: Option<Vec<u8>>| {
                    let Some(bytes) = current else {
                        return Ok(None);
                    };
                    let mut b: Bootstrap = serde_json::from_slice(&bytes)
                        .map_err(|e| Rejection::new(ErrorCode::Internal, e.to_string()))?;
                    b.refused += 1;
                    serde_json::to_vec(&b)
                        .map(Some)
                        .map_err(|e| Rejection::new(ErrorCode::Internal, e.to_string()))
                });
                let _ = self
                    .store()
                    .update_record(RecordKind::Bootstrap, &bootstrap_key(registry, &id), update)
                    .await;
            }
        }
        self.record(registry, &decision).await?;
        tracing::info!(
            registry = %registry, bootstrap = bootstrap_id, device = %decision.claims.device_id,
            decision = %decision.decision, reason = decision.reason.map(Reason::as_str).unwrap_or(""),
            "provisioning decision"
        );
        Ok(decision)
    }

    async fn evaluate(
        &self,
        registry: &RegistryName,
        bootstrap_id: &str,
        request: &ProvisionRequest,
        now: DateTime<Utc>,
        decision: &mut Decision,
    ) -> std::result::Result<Device, (Reason, String)> {
        let internal = |e: crate::Error| (Reason::Internal, e.to_string());
        let b = self
            .get_bootstrap(registry, bootstrap_id)
            .await
            .map_err(|_| {
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
        if b.provisioned >= b.device_quota {
            // Only a repeat of an allowed request may still be answered (see `repeat_of`).
            if let Some(existing) = self.repeat_of(registry, &b, request).await {
                decision.rule = "repeat of an allowed request".into();
                decision.certificate = self.certificate_for(request, &existing.id)?;
                return Ok(existing);
            }
            return Err((
                Reason::QuotaExceeded,
                format!(
                    "bootstrap `{bootstrap_id}` has used its quota of {} devices",
                    b.device_quota
                ),
            ));
        }
        if !self.take_token(&b) {
            return Err((
                Reason::RateLimited,
                format!(
                    "bootstrap `{bootstrap_id}` is provisioning faster than it may; retry shortly"
                ),
            ));
        }
        let id: DeviceId = request
            .claims
            .device_id
            .parse()
            .map_err(|e: perch_core::IdError| (Reason::InvalidRequest, e.to_string()))?;
        if !glob_matches(&b.device_id_pattern, id.as_str()) {
            return Err((
                Reason::InvalidRequest,
                format!(
                    "device id `{id}` does not match the bootstrap's pattern `{}`",
                    b.device_id_pattern
                ),
            ));
        }
        let generated;
        let request = match request.generate_key.as_deref() {
            None => request,
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
            Some(other) => {
                return Err((
                    Reason::InvalidRequest,
                    format!("generate_key takes \"ES256\" and no public_key or csr, got '{other}'"),
                ));
            }
        };
        let (mut credential, fingerprint) = request_credential(request)?;
        decision.key_fingerprint = fingerprint.clone();
        let claims = [
            (EntryKind::Serial, request.claims.serial.as_str()),
            (EntryKind::Mac, request.claims.mac.as_str()),
            (EntryKind::DeviceId, id.as_str()),
            (EntryKind::KeyFingerprint, fingerprint.as_str()),
        ];
        for (kind, value) in claims {
            if let Some(e) = self
                .entry(registry, PolicyList::Deny, kind, value)
                .await
                .map_err(internal)?
            {
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
        let has_allowlist = !self
            .store()
            .list_records(RecordKind::PolicyEntry, &format!("{registry}/allow/"), 1)
            .await
            .map_err(|e| (Reason::Internal, e.to_string()))?
            .is_empty();
        if has_allowlist {
            let mut allowed = false;
            for (kind, value) in claims {
                if self
                    .entry(registry, PolicyList::Allow, kind, value)
                    .await
                    .map_err(internal)?
                    .is_some()
                {
                    decision.rule = format!("allowlist {}={}", kind.as_str(), value);
                    allowed = true;
                    break;
                }
            }
            if !allowed {
                return Err((
                    Reason::NotAllowlisted,
                    "no allowlist entry matches the device's serial, MAC, id or key".into(),
                ));
            }
        }
        if let Some(existing) = self.repeat_of(registry, &b, request).await {
            decision.rule = "repeat of an allowed request".into();
            decision.certificate = self.certificate_for(request, &existing.id)?;
            return Ok(existing);
        }
        let webhook = self.get_webhook(registry).await.map_err(internal)?;
        if !webhook.url.is_empty() {
            self.ask_webhook(&webhook, &b, request, &fingerprint)
                .await?;
            decision.rule = format!("webhook {}", webhook.url);
        }
        // Only now, with every check passed, may Perch's CA sign the CSR; the certificate then
        // becomes the device's credential.
        if let Some(certificate) = self.certificate_for(request, &id)? {
            credential = DeviceCredential {
                format: if credential.format.is_rsa() {
                    PublicKeyFormat::RsaX509Pem
                } else {
                    PublicKeyFormat::Es256X509Pem
                },
                key: certificate.clone(),
                expiration_time: None,
            };
            decision.certificate = Some(certificate);
        }
        // Reserve a slot of the quota atomically (released if registration fails).
        let quota_update = |delta: i64| {
            Box::new(move |current: Option<Vec<u8>>| {
                let bytes =
                    current.ok_or_else(|| Rejection::not_found("the bootstrap was deleted"))?;
                let mut b: Bootstrap = serde_json::from_slice(&bytes)
                    .map_err(|e| Rejection::new(ErrorCode::Internal, e.to_string()))?;
                if delta > 0 && b.provisioned >= b.device_quota {
                    return Err(Rejection::new(ErrorCode::ResourceExhausted, "quota"));
                }
                b.provisioned = b.provisioned.saturating_add_signed(delta);
                serde_json::to_vec(&b)
                    .map(Some)
                    .map_err(|e| Rejection::new(ErrorCode::Internal, e.to_string()))
            }) as perch_store::RecordUpdate
        };
        let key = bootstrap_key(registry, bootstrap_id);
        self.store()
            .update_record(RecordKind::Bootstrap, &key, quota_update(1))
            .await
            .map_err(|_| {
                (
                    Reason::QuotaExceeded,
                    format!(
                        "bootstrap `{bootstrap_id}` has used its quota of {} devices",
                        b.device_quota
                    ),
                )
            })?;
        let registered = self
            .register(registry, &b, &id, request, credential, &fingerprint)
            .await;
        if registered.is_err() {
            let _ = self
                .store()
                .update_record(RecordKind::Bootstrap, &key, quota_update(-1))
                .await;
        }
        registered
    }

    /// A certificate from Perch's CA for the request's CSR, when there is a CSR and a CA.
    fn certificate_for(
        &self,
        request: &ProvisionRequest,
        id: &DeviceId,
    ) -> std::result::Result<Option<String>, (Reason, String)> {
        match (&request.csr, self.registry.certificate_issuer()) {
            (Some(csr), Some(issuer)) => issuer
                .issue(csr, id.as_str())
                .map(Some)
                .map_err(|e| (Reason::InvalidCsr, e)),
            _ => Ok(None),
        }
    }

    /// The device an earlier, allowed request from this bootstrap with this same key created,
    /// if this request repeats it (its answer was lost on the way): retries are always safe.
    async fn repeat_of(
        &self,
        registry: &RegistryName,
        b: &Bootstrap,
        request: &ProvisionRequest,
    ) -> Option<Device> {
        let id: DeviceId = request.claims.device_id.parse().ok()?;
        let (_, fingerprint) = request_credential(request).ok()?;
        let name = DeviceName {
            registry: registry.clone(),
            device: DeviceRef::Id(id),
        };
        let existing = self.registry.get_device(&name).await.ok()?;
        let same = existing.metadata.get("provisionedBy") == Some(&b.id)
            && existing.metadata.get("keyFingerprint") == Some(&fingerprint)
            && !existing.blocked;
        same.then_some(existing)
    }

    async fn register(
        &self,
        registry: &RegistryName,
        b: &Bootstrap,
        id: &DeviceId,
        request: &ProvisionRequest,
        credential: DeviceCredential,
        fingerprint: &str,
    ) -> std::result::Result<Device, (Reason, String)> {
        let name = DeviceName {
            registry: registry.clone(),
            device: DeviceRef::Id(id.clone()),
        };
        match self.registry.get_device(&name).await {
            Ok(existing) => {
                if b.reprovision_policy != ReprovisionPolicy::Rotate {
                    return Err((
                        Reason::AlreadyRegistered,
                        format!("device `{id}` is already registered"),
                    ));
                }
                let patch = DevicePatch {
                    credentials: vec![credential],
                    ..Default::default()
                };
                return self
                    .registry
                    .update_device(&name, patch, &["credentials".to_owned()])
                    .await
                    .map_err(|e| (Reason::Internal, e.to_string()))
                    .map(|d| Device {
                        num_id: existing.num_id,
                        ..d
                    });
            }
            Err(e) if e.code() == ErrorCode::NotFound => {}
            Err(e) => return Err((Reason::Internal, e.to_string())),
        }
        let mut device = Device::new(id.clone(), 0);
        device.credentials = vec![credential];
        device.metadata.insert("provisionedBy".into(), b.id.clone());
        device
            .metadata
            .insert("keyFingerprint".into(), fingerprint.to_owned());
        if !b.lot.is_empty() {
            device.metadata.insert("lot".into(), b.lot.clone());
        }
        if !request.claims.serial.is_empty() {
            device
                .metadata
                .insert("serial".into(), request.claims.serial.clone());
        }
        if !request.claims.mac.is_empty() {
            device
                .metadata
                .insert("mac".into(), request.claims.mac.clone());
        }
        self.registry
            .create_device(registry, device)
            .await
            .map_err(|e| match e.code() {
                ErrorCode::AlreadyExists => (
                    Reason::AlreadyRegistered,
                    format!("device `{id}` is already registered"),
                ),
                ErrorCode::InvalidArgument => (Reason::InvalidPublicKey, e.to_string()),
                _ => (Reason::Internal, e.to_string()),
            })
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
