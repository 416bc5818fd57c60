//! Fleet-provisioning records (docs/provisioning.md): bootstrap credentials, policy list
//! entries, requests and decisions.

use chrono::{DateTime, Utc};
use perch_core::model::PublicKeyFormat;
use serde::{Deserialize, Serialize};

/// What happens when a request names a device that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReprovisionPolicy {
    /// Refuse with ALREADY_REGISTERED.
    #[default]
    Deny,
    /// Replace the device's credentials with the new key.
    Rotate,
    /// Hold the request as a pending approval (PENDING_APPROVAL) until an operator approves it
    /// (the device's key is then replaced and its next retry is answered) or denies it.
    RequireApproval,
}

/// A bootstrap credential: one key pair flashed onto a batch of devices, allowed only to ask
/// for device credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Bootstrap {
    pub id: String,
    /// `projects/P/locations/L/registries/R`.
    pub registry: String,
    pub public_key: String,
    pub format: PublicKeyFormatName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_time: Option<DateTime<Utc>>,
    /// Devices this bootstrap may provision in all.
    pub device_quota: u64,
    /// A glob (`*` matches any run of characters) requested device ids must match; empty = any.
    #[serde(default)]
    pub device_id_pattern: String,
    #[serde(default)]
    pub lot: String,
    #[serde(default)]
    pub reprovision_policy: ReprovisionPolicy,
    /// Provisions per second this bootstrap may make (0 = the default, 5,000); faster requests
    /// are refused with RATE_LIMITED and may retry.
    #[serde(default)]
    pub max_provisions_per_second: u32,
    pub enabled: bool,
    #[serde(default)]
    pub provisioned: u64,
    #[serde(default)]
    pub refused: u64,
    /// Decisions of this bootstrap stored now: refusals and repeats stop being stored when it
    /// reaches the cap (`--provisioning-decisions-per-bootstrap`); the retention purge counts
    /// it down.
    #[serde(default)]
    pub decisions: u64,
    pub create_time: DateTime<Utc>,
}

/// `ES256_PEM` or `RSA_PEM`, spelled as in the cloudiot API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PublicKeyFormatName {
    #[default]
    #[serde(rename = "ES256_PEM")]
    Es256Pem,
    #[serde(rename = "RSA_PEM")]
    RsaPem,
}

impl PublicKeyFormatName {
    pub fn format(self) -> PublicKeyFormat {
        match self {
            PublicKeyFormatName::Es256Pem => PublicKeyFormat::Es256Pem,
            PublicKeyFormatName::RsaPem => PublicKeyFormat::RsaPem,
        }
    }
}

/// Which policy list an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyList {
    Allow,
    Deny,
}

/// What a policy entry matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EntryKind {
    Serial,
    Mac,
    DeviceId,
    KeyFingerprint,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Serial => "serial",
            EntryKind::Mac => "mac",
            EntryKind::DeviceId => "device_id",
            EntryKind::KeyFingerprint => "key_fingerprint",
        }
    }
}

/// One allowlist or denylist entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEntry {
    pub list: PolicyList,
    pub kind: EntryKind,
    pub value: String,
    #[serde(default)]
    pub reason: String,
}

/// What a device says about itself when it asks for a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Claims {
    #[serde(default)]
    pub serial: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub device_id: String,
}

/// The key a device brings: a public key, or a CSR whose key is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestKey {
    pub format: PublicKeyFormatName,
    pub key: String,
}

/// A provisioning request (the body a device publishes, SPEC in docs/provisioning.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProvisionRequest {
    #[serde(default)]
    pub request_id: String,
    #[serde(flatten)]
    pub claims: Claims,
    #[serde(default)]
    pub public_key: Option<RequestKey>,
    #[serde(default)]
    pub csr: Option<String>,
    /// `"ES256"`: the server makes the key pair and returns the private key (devices that cannot
    /// make keys; the CSR or public key forms are preferred).
    #[serde(default)]
    pub generate_key: Option<String>,
}

/// Machine-readable reasons for a refusal (also sent to the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    BootstrapDisabled,
    BootstrapExpired,
    QuotaExceeded,
    RateLimited,
    InvalidRequest,
    InvalidPublicKey,
    InvalidCsr,
    Denylisted,
    NotAllowlisted,
    AlreadyRegistered,
    WebhookDenied,
    WebhookTimeout,
    WebhookError,
    PendingApproval,
    ApprovalDenied,
    Internal,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BootstrapDisabled => "BOOTSTRAP_DISABLED",
            Reason::BootstrapExpired => "BOOTSTRAP_EXPIRED",
            Reason::QuotaExceeded => "QUOTA_EXCEEDED",
            Reason::RateLimited => "RATE_LIMITED",
            Reason::InvalidRequest => "INVALID_REQUEST",
            Reason::InvalidPublicKey => "INVALID_PUBLIC_KEY",
            Reason::InvalidCsr => "INVALID_CSR",
            Reason::Denylisted => "DENYLISTED",
            Reason::NotAllowlisted => "NOT_ALLOWLISTED",
            Reason::AlreadyRegistered => "ALREADY_REGISTERED",
            Reason::WebhookDenied => "WEBHOOK_DENIED",
            Reason::WebhookTimeout => "WEBHOOK_TIMEOUT",
            Reason::WebhookError => "WEBHOOK_ERROR",
            Reason::PendingApproval => "PENDING_APPROVAL",
            Reason::ApprovalDenied => "APPROVAL_DENIED",
            Reason::Internal => "INTERNAL",
        }
    }
}

/// The outcome of one request, stored and sent back to the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub time: DateTime<Utc>,
    pub registry: String,
    pub bootstrap: String,
    pub request_id: String,
    #[serde(flatten)]
    pub claims: Claims,
    /// `ALLOWED` or `DENIED`.
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    pub message: String,
    /// The rule that matched (`denylist serial=…`), when one did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The certificate Perch's CA issued for the request's CSR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// A server-made private key (`generate_key`), for the device only: never stored, never
    /// serialized; the bridge adds it to the answer it sends.
    #[serde(skip)]
    pub private_key: Option<String>,
}

/// What an unanswered or failing webhook means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WebhookOnError {
    #[default]
    Deny,
    Allow,
}

/// The operator's webhook, asked last before a device is registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Webhook {
    /// `http://` or `https://` URL; empty = no webhook.
    pub url: String,
    /// Milliseconds to wait for the answer (default 2,000; at most 30,000).
    pub timeout_ms: u64,
    pub on_error: WebhookOnError,
}

/// Where a re-provisioning request held for an operator stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "PENDING",
            ApprovalState::Approved => "APPROVED",
            ApprovalState::Denied => "DENIED",
        }
    }
}

/// A request to re-provision an existing device under a `REQUIRE_APPROVAL` bootstrap: one per
/// device, the newest request's key replacing an older pending one. An operator decides on it
/// by naming its `key_fingerprint`, so a replaced key is never approved by mistake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub registry: String,
    pub device_id: String,
    pub bootstrap: String,
    pub claims: Claims,
    pub key_fingerprint: String,
    pub state: ApprovalState,
    pub request_time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decide_time: Option<DateTime<Utc>>,
    /// The request's key, registered when an operator approves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<RequestKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}
