//! TLS material in `DIR/tls/`: a CA that devices are given (like Google's `roots.pem`) and a
//! server certificate signed by it.
//!
//! The CA (`ca.pem`, `ca.key` 0600) is made once and kept. The server certificate
//! (`server.pem`, `server.key` 0600) is issued again at every start, so that a new `--tls-san`
//! or host name takes effect; devices trust the CA, not the leaf. `--tls-cert/--tls-key`
//! replace the generated leaf entirely.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use perch_core::Clock;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::datadir::write_private;

/// Paths of the TLS material a server uses.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

fn host_name() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Makes (or reuses) the CA and issues the server certificate for localhost, loopback
/// addresses, the host name and `extra_sans`.
pub fn ensure(dir: &Path, extra_sans: &[String]) -> Result<TlsMaterial> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca_pem = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let issuer = if ca_pem.exists() && ca_key_path.exists() {
        let key = KeyPair::from_pem(&fs::read_to_string(&ca_key_path)?)
            .with_context(|| format!("{} is not a valid key", ca_key_path.display()))?;
        Issuer::from_ca_cert_pem(&fs::read_to_string(&ca_pem)?, key)
            .with_context(|| format!("{} is not a valid certificate", ca_pem.display()))?
    } else {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Perch device CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Perch");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let cert = params.self_signed(&key)?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
        fs::write(&ca_pem, cert.pem())
            .with_context(|| format!("cannot write {}", ca_pem.display()))?;
        Issuer::new(params, key)
    };

    let mut sans = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    sans.extend(host_name());
    sans.extend(extra_sans.iter().cloned());
    sans.dedup();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "perch server");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    let cert = params.signed_by(&key, &issuer)?;
    let cert_pem = dir.join("server.pem");
    let key_pem = dir.join("server.key");
    write_private(&key_pem, key.serialize_pem().as_bytes())?;
    fs::write(&cert_pem, cert.pem())?;
    Ok(TlsMaterial {
        ca_pem,
        cert_pem,
        key_pem,
    })
}

/// TLS 1.3 session tickets sent after each full handshake (a device resumes with one).
const TLS13_TICKETS_PER_HANDSHAKE: usize = 1;

/// A rustls server config (ring provider, TLS 1.2 and 1.3) for a certificate chain and key.
pub fn server_config(
    cert_pem: &Path,
    key_pem: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert_pem)
        .with_context(|| format!("cannot read {}", cert_pem.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} holds no valid certificate", cert_pem.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_pem)
        .with_context(|| format!("{} holds no valid private key", key_pem.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Stateless TLS 1.3 session tickets (keys in memory, rotated by rustls every 6 hours), one per
    // handshake: a device that reconnects — after provisioning, after a network blip — resumes
    // without the certificate signature on our side or the chain check on its own. The device
    // still authenticates in CONNECT with its JWT, so resumption grants nothing by itself.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().context("cannot make the TLS session ticket key")?;
    config.send_tls13_tickets = TLS13_TICKETS_PER_HANDSHAKE;
    Ok(Arc::new(config))
}

/// Signs provisioning CSRs with the data dir's CA (the same CA devices trust for TLS), so a
/// device that sent a CSR connects with a certificate chaining to `ca.pem`.
pub struct DeviceCertificateIssuer {
    /// The CA's certificate and key, parsed once: issuing runs on every provisioning request.
    issuer: Issuer<'static, KeyPair>,
    /// Where "today" comes from: certificates are valid from it.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for DeviceCertificateIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceCertificateIssuer(***)")
    }
}

/// How long a certificate issued for a provisioning CSR is valid.
pub const DEVICE_CERTIFICATE_VALIDITY_DAYS: i64 = 10 * 365;

/// The first and last day of a device certificate issued at `now`: whole days (UTC), from
/// today for `DEVICE_CERTIFICATE_VALIDITY_DAYS`.
fn device_certificate_validity(now: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
    let today = now.date_naive();
    (
        today,
        today + chrono::Duration::days(DEVICE_CERTIFICATE_VALIDITY_DAYS),
    )
}

impl DeviceCertificateIssuer {
    /// Reads the CA made by `ensure`; certificates it issues are valid from `clock`'s today.
    pub fn load(material: &TlsMaterial, clock: Arc<dyn Clock>) -> Result<DeviceCertificateIssuer> {
        let key_path = material.ca_pem.with_file_name("ca.key");
        let ca_cert_pem = fs::read_to_string(&material.ca_pem)
            .with_context(|| format!("cannot read {}", material.ca_pem.display()))?;
        let ca_key_pem = fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        let key = KeyPair::from_pem(&ca_key_pem)
            .with_context(|| format!("{} holds no usable CA key", key_path.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, key).with_context(|| {
            format!(
                "{} is not a usable CA certificate",
                material.ca_pem.display()
            )
        })?;
        Ok(DeviceCertificateIssuer { issuer, clock })
    }
}

impl perch_registry::events::CertificateIssuer for DeviceCertificateIssuer {
    /// A client certificate for a key whose CSR provisioning already verified. Only the key is
    /// taken from the device: subject (CN = device id), validity, and usage (digital signature,
    /// client authentication, not a CA) are Perch's, so no device can obtain a certificate
    /// naming a host or able to sign others.
    fn issue(&self, public_key_pem: &str, device_id: &str) -> std::result::Result<String, String> {
        let key = rcgen::SubjectPublicKeyInfo::from_pem(public_key_pem)
            .map_err(|e| format!("the CSR's public key cannot be read: {e}"))?;
        let mut params = CertificateParams::default();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(
            &rand::random::<[u8; 16]>()[..],
        ));
        let (from, until) = device_certificate_validity(self.clock.now());
        let ymd = |d: NaiveDate| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
        params.not_before = ymd(from);
        params.not_after = ymd(until);
        params
            .distinguished_name
            .push(DnType::CommonName, device_id);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| format!("the certificate could not be signed: {e}"))?;
        Ok(cert.pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_certificates_are_valid_from_the_clocks_day() {
        let now = DateTime::parse_from_rfc3339("2030-02-28T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        let (from, until) = device_certificate_validity(now);
        assert_eq!(from, NaiveDate::from_ymd_opt(2030, 2, 28).unwrap());
        assert_eq!(
            (until - from).num_days(),
            DEVICE_CERTIFICATE_VALIDITY_DAYS,
            "{until}"
        );
    }
}
