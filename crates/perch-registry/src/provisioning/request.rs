//! What a provisioning request is checked for before any record is read: its size limits, the
//! claims a decision keeps, its key or CSR (PEM, PKCS#10 signature, key parse), and the
//! metadata a provisioned device then carries.
//!
//! Owns these pure checks and their messages; the order they run in is `evaluate`'s.

use std::collections::BTreeMap;

use perch_core::model::{Device, DeviceCredential, PublicKeyFormat};
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;

use super::glob::glob_matches;
use super::model::{Claims, ProvisionRequest, Reason};
use super::{
    CLAIM_DEVICE_ID_MAX_BYTES, CLAIM_MAC_MAX_BYTES, CLAIM_SERIAL_MAX_BYTES, REQUEST_ID_MAX_BYTES,
    REQUEST_KEY_MAX_BYTES,
};
use crate::keys;

/// A refusal: the machine-readable reason and the message the device sees.
pub(super) type Refusal = (Reason, String);

/// The key a request brings, parsed: credential to register and its fingerprint.
pub(super) fn request_credential(
    request: &ProvisionRequest,
) -> Result<(DeviceCredential, String), Refusal> {
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
            (format, perch_device::jwt::pem("PUBLIC KEY", spki.raw))
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

/// Whether `device` was provisioned by bootstrap `bootstrap` for `serial` (a device without a
/// serial matches only a request without one): the only devices re-provisioning may change.
pub(super) fn provisioned_for(device: &Device, bootstrap: &str, serial: &str) -> bool {
    device.metadata.get("provisionedBy").map(String::as_str) == Some(bootstrap)
        && device
            .metadata
            .get("serial")
            .map(String::as_str)
            .unwrap_or("")
            == serial
}

/// At most `max` bytes of `s`, cut on a character boundary.
pub(super) fn truncated(s: &str, max: usize) -> &str {
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
pub(super) fn bounded_claims(claims: &Claims) -> Claims {
    let keep = |v: &str, max: usize| {
        if v.len() <= max {
            v.to_owned()
        } else {
            String::new()
        }
    };
    Claims {
        serial: keep(&claims.serial, CLAIM_SERIAL_MAX_BYTES),
        mac: keep(&claims.mac, CLAIM_MAC_MAX_BYTES),
        device_id: keep(&claims.device_id, CLAIM_DEVICE_ID_MAX_BYTES),
    }
}

/// The first field of a request over its size limit, as a refusal message.
pub(super) fn oversized(request: &ProvisionRequest) -> Option<String> {
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

/// The metadata a provisioned device carries: who provisioned it, with which key, and what it
/// claimed (the denylist matches on these later).
pub(super) fn provisioned_metadata(
    bootstrap: &str,
    lot: &str,
    claims: &Claims,
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
pub(super) fn certificate_credential(
    requested: &DeviceCredential,
    certificate: String,
) -> DeviceCredential {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_claims_are_named_and_dropped_from_the_stored_claims() {
        let request = ProvisionRequest {
            claims: Claims {
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
