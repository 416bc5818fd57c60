//! The TLS client configuration: rustls on `ring`, trusting only the certificates in one CA file
//! (Perch's `tls/ca.pem`, or Google's `roots.pem`), hostname checks on, TLS 1.2 and 1.3.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{DeviceError, Result};

/// A ready TLS client configuration, shared by every connection attempt.
pub type TlsConfig = Arc<ClientConfig>;

/// Builds a client config whose only roots are the certificates in `ca_pem`.
pub fn client_config(ca_pem: &[u8]) -> Result<TlsConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| DeviceError::InvalidCa(format!("unreadable PEM ({e})")))?;
        roots
            .add(cert)
            .map_err(|e| DeviceError::InvalidCa(format!("unusable certificate ({e})")))?;
        count += 1;
    }
    if count == 0 {
        return Err(DeviceError::InvalidCa(
            "no '-----BEGIN CERTIFICATE-----' block found".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DeviceError::InvalidCa(format!("TLS setup failed ({e})")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused() {
        let err = client_config(b"hello").unwrap_err();
        assert!(
            err.to_string().contains("no '-----BEGIN CERTIFICATE-----'"),
            "{err}"
        );
    }
}
