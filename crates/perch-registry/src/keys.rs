//! Device and registry credentials: PEM keys and X.509 certificates, checked when they are added.
//!
//! Pure functions, no I/O. What they return is what JWT verification needs later: the key's
//! algorithm and the raw public key bytes `ring` verifies with.

use chrono::{DateTime, TimeZone, Utc};
use perch_core::Rejection;
use perch_core::model::{PublicKeyFormat, X509Details};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Smallest RSA modulus accepted (RS256 with ring needs 2048–8192 bits).
pub const RSA_KEY_MIN_BITS: usize = 2048;
/// Largest RSA modulus accepted.
pub const RSA_KEY_MAX_BITS: usize = 8192;

/// The signature algorithm a key verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Es256,
    Rs256,
}

/// A parsed public key: its algorithm and the `subjectPublicKey` bytes (an uncompressed P-256
/// point, or a DER `RSAPublicKey`), ready for `ring::signature::UnparsedPublicKey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    pub algorithm: KeyAlgorithm,
    pub public_key: Vec<u8>,
}

fn invalid(message: String) -> Rejection {
    Rejection::invalid_argument(message)
}

/// Decodes exactly one PEM block with the expected label.
fn decode_pem(text: &str, label: &str, what: &str) -> Result<Vec<u8>, Rejection> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.trim().as_bytes()).map_err(|_| {
        invalid(format!(
            "the {what} is not valid PEM; expected a '-----BEGIN {label}-----' block"
        ))
    })?;
    if pem.label != label {
        return Err(invalid(format!(
            "the {what} is a '{}' PEM block; expected '-----BEGIN {label}-----'",
            pem.label
        )));
    }
    Ok(pem.contents)
}

fn parse_spki(
    spki: &SubjectPublicKeyInfo<'_>,
    rsa: bool,
    what: &str,
) -> Result<ParsedKey, Rejection> {
    let oid = &spki.algorithm.algorithm;
    if rsa {
        if *oid != OID_PKCS1_RSAENCRYPTION {
            return Err(invalid(format!(
                "the {what} is not an RSA key; use an ES256 format for P-256 keys"
            )));
        }
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(invalid(format!("the {what} holds a malformed RSA key"))),
        };
        if !(RSA_KEY_MIN_BITS..=RSA_KEY_MAX_BITS).contains(&bits) {
            return Err(invalid(format!(
                "the {what} is a {bits}-bit RSA key; RS256 needs {RSA_KEY_MIN_BITS} to {RSA_KEY_MAX_BITS} bits"
            )));
        }
        Ok(ParsedKey {
            algorithm: KeyAlgorithm::Rs256,
            public_key: spki.subject_public_key.data.to_vec(),
        })
    } else {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if *oid != OID_KEY_TYPE_EC_PUBLIC_KEY || curve.as_ref() != Some(&OID_EC_P256) {
            return Err(invalid(format!(
                "the {what} is not a P-256 (prime256v1) EC key, which ES256 requires"
            )));
        }
        let point = &spki.subject_public_key.data;
        if point.len() != 65 || point[0] != 4 {
            return Err(invalid(format!("the {what} holds a malformed P-256 point")));
        }
        Ok(ParsedKey {
            algorithm: KeyAlgorithm::Es256,
            public_key: point.to_vec(),
        })
    }
}

/// Parses a device credential in `format`, refusing a malformed key or one that does not match
/// its format (SPEC.md §1.3).
pub fn parse_device_key(format: PublicKeyFormat, pem: &str) -> Result<ParsedKey, Rejection> {
    match format {
        PublicKeyFormat::Unspecified => Err(invalid(
            "the public key format is missing; use RSA_PEM, RSA_X509_PEM, ES256_PEM or ES256_X509_PEM".into(),
        )),
        PublicKeyFormat::Es256Pem | PublicKeyFormat::RsaPem => {
            let der = decode_pem(pem, "PUBLIC KEY", "public key")?;
            let (_, spki) = SubjectPublicKeyInfo::from_der(&der)
                .map_err(|_| invalid("the public key is not a valid SubjectPublicKeyInfo".into()))?;
            parse_spki(&spki, format.is_rsa(), "public key")
        }
        PublicKeyFormat::Es256X509Pem | PublicKeyFormat::RsaX509Pem => {
            let der = decode_pem(pem, "CERTIFICATE", "certificate")?;
            let (_, cert) = X509Certificate::from_der(&der)
                .map_err(|_| invalid("the certificate is not a valid X.509 certificate".into()))?;
            parse_spki(cert.public_key(), format.is_rsa(), "certificate's key")
        }
    }
}

/// Checks that a device certificate was signed by one of the registry's CA certificates and is
/// not one of them (SPEC.md §1.4).
pub fn check_signed_by_registry_ca(
    device_cert_pem: &str,
    ca_pems: &[String],
) -> Result<(), Rejection> {
    let der = decode_pem(device_cert_pem, "CERTIFICATE", "certificate")?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|_| invalid("the certificate is not a valid X.509 certificate".into()))?;
    for ca_pem in ca_pems {
        let Ok(ca_der) = decode_pem(ca_pem, "CERTIFICATE", "registry certificate") else {
            continue;
        };
        if ca_der == der {
            return Err(invalid(
                "a device credential must differ from the registry's CA certificates".into(),
            ));
        }
        let Ok((_, ca)) = X509Certificate::from_der(&ca_der) else {
            continue;
        };
        if cert.verify_signature(Some(ca.public_key())).is_ok() {
            return Ok(());
        }
    }
    Err(invalid(
        "the registry has CA certificates, so device credentials must be X.509 certificates signed by one of them".into(),
    ))
}

fn asn1_time(t: x509_parser::time::ASN1Time) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(t.timestamp(), 0).single()
}

/// Parses a registry CA certificate and reports its details.
pub fn parse_registry_certificate(pem: &str) -> Result<X509Details, Rejection> {
    let der = decode_pem(pem, "CERTIFICATE", "registry certificate")?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|_| invalid("the registry certificate is not a valid X.509 certificate".into()))?;
    let key_type = match cert.public_key().parsed() {
        Ok(PublicKey::RSA(_)) => "RSA",
        Ok(PublicKey::EC(_)) => "EC",
        _ => "UNKNOWN",
    };
    let sig = x509_parser::oid_registry::OidRegistry::default()
        .with_crypto()
        .get(&cert.signature_algorithm.algorithm)
        .map(|e| e.sn().to_owned())
        .unwrap_or_else(|| cert.signature_algorithm.algorithm.to_id_string());
    Ok(X509Details {
        issuer: cert.issuer().to_string(),
        subject: cert.subject().to_string(),
        start_time: asn1_time(cert.validity().not_before),
        expiry_time: asn1_time(cert.validity().not_after),
        signature_algorithm: sig,
        public_key_type: key_type.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec_key() -> rcgen::KeyPair {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    fn self_signed(key: &rcgen::KeyPair) -> rcgen::Certificate {
        rcgen::CertificateParams::new(vec!["device".into()])
            .unwrap()
            .self_signed(key)
            .unwrap()
    }

    #[test]
    fn es256_pem_and_certificate_parse() {
        let key = ec_key();
        let parsed = parse_device_key(PublicKeyFormat::Es256Pem, &key.public_key_pem()).unwrap();
        assert_eq!(parsed.algorithm, KeyAlgorithm::Es256);
        assert_eq!(parsed.public_key.len(), 65);
        let cert = self_signed(&key);
        let from_cert = parse_device_key(PublicKeyFormat::Es256X509Pem, &cert.pem()).unwrap();
        assert_eq!(from_cert, parsed);
    }

    #[test]
    fn format_mismatch_and_garbage_are_refused() {
        let key = ec_key();
        let err = parse_device_key(PublicKeyFormat::RsaPem, &key.public_key_pem()).unwrap_err();
        assert!(err.message.contains("not an RSA key"), "{err}");
        let err =
            parse_device_key(PublicKeyFormat::Es256X509Pem, &key.public_key_pem()).unwrap_err();
        assert!(err.message.contains("'PUBLIC KEY' PEM block"), "{err}");
        let err = parse_device_key(PublicKeyFormat::Es256Pem, "not a key").unwrap_err();
        assert!(err.message.contains("not valid PEM"), "{err}");
        let garbled = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(parse_device_key(PublicKeyFormat::Es256Pem, garbled).is_err());
        assert!(parse_device_key(PublicKeyFormat::Unspecified, &key.public_key_pem()).is_err());
    }

    #[test]
    fn device_certificates_must_chain_to_a_registry_ca() {
        let ca_key = ec_key();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let device_key = ec_key();
        let device_cert = rcgen::CertificateParams::new(vec!["d".into()])
            .unwrap()
            .signed_by(&device_key, &issuer)
            .unwrap();
        let cas = vec![ca_cert.pem()];
        check_signed_by_registry_ca(&device_cert.pem(), &cas).unwrap();
        assert!(check_signed_by_registry_ca(&self_signed(&device_key).pem(), &cas).is_err());
        assert!(check_signed_by_registry_ca(&ca_cert.pem(), &cas).is_err());
        let details = parse_registry_certificate(&ca_cert.pem()).unwrap();
        assert_eq!(details.public_key_type, "EC");
        assert!(details.expiry_time.is_some());
    }
}
