//! Resources and key material the tests create: registry and device names and protos, credentials,
//! keys, a test CA.

use super::*;

/// `LOCATION/registries/{id}`.
pub(crate) fn registry_name(id: &str) -> String {
    format!("{LOCATION}/registries/{id}")
}

/// `LOCATION/registries/{registry}/devices/{device}`.
pub(crate) fn device_name(registry: &str, device: &str) -> String {
    format!("{LOCATION}/registries/{registry}/devices/{device}")
}

/// Creates a registry with nothing but an id.
pub(crate) async fn create_registry(client: &mut Grpc, id: &str) -> pb::DeviceRegistry {
    client
        .create_device_registry(pb::CreateDeviceRegistryRequest {
            parent: LOCATION.into(),
            device_registry: Some(pb::DeviceRegistry {
                id: id.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|s| panic!("create registry {id}: {s:?}"))
        .into_inner()
}

/// Creates `device` in `registry`.
pub(crate) async fn create_device(
    client: &mut Grpc,
    registry: &str,
    device: pb::Device,
) -> pb::Device {
    let id = device.id.clone();
    client
        .create_device(pb::CreateDeviceRequest {
            parent: registry_name(registry),
            device: Some(device),
        })
        .await
        .unwrap_or_else(|s| panic!("create device {id}: {s:?}"))
        .into_inner()
}

/// A device with only an id.
pub(crate) fn device(id: &str) -> pb::Device {
    pb::Device {
        id: id.into(),
        ..Default::default()
    }
}

/// A gateway device (`gatewayType` GATEWAY, association auth).
pub(crate) fn gateway(id: &str) -> pb::Device {
    pb::Device {
        id: id.into(),
        gateway_config: Some(pb::GatewayConfig {
            gateway_type: pb::GatewayType::Gateway as i32,
            gateway_auth_method: pb::GatewayAuthMethod::AssociationOnly as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A public-key credential.
pub(crate) fn credential(format: pb::PublicKeyFormat, key: &str) -> pb::DeviceCredential {
    pb::DeviceCredential {
        credential: Some(pb::device_credential::Credential::PublicKey(
            pb::PublicKeyCredential {
                format: format as i32,
                key: key.into(),
            },
        )),
        expiration_time: None,
    }
}

/// A fixed 2048-bit RSA public key (SubjectPublicKeyInfo), made with
/// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 | openssl rsa -pubout`.
pub(crate) const RSA_PUBLIC_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAgnyohErvMg0U2DRc8FNY
Zwm1IH22bKdDHaDjvAekFNvuFTTNa83rm+Iv62CY1O1ktHA8xog3vzzokAJfRVG0
hPYtEqJcG15TOPM5ESFOnV5kOIdIatCBIxmdtKxGoBTBkL4gva8iUWJ4ZiIHLFMQ
tsvP+KfLmtu/GXdNZl+Z6oWUUbTIUKqM6geu1qev9D422Wy+LbJplyI79qov6PDz
Ra6mNP8z+qTg9wxz2F2UGri1ity/YZmJKd/5ikgGfsy8F5wLtSN5Fp+MRt2b/h9V
Z1X8YmyOTsT2oSJvAkLxb8fRsY/sMWgEdMwZDIEvXRHmAYNOnHccagEStL8ES7Wj
nwIDAQAB
-----END PUBLIC KEY-----
";

fn p256() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key")
}

/// A fresh P-256 public key as `-----BEGIN PUBLIC KEY-----` PEM (ES256_PEM).
pub(crate) fn es256_public_key_pem() -> String {
    p256().public_key_pem()
}

/// A CA that signs device certificates (registry credentials).
pub(crate) struct TestCa {
    pub(crate) cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub(crate) fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = p256();
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A fresh ES256 device certificate signed by this CA (ES256_X509_PEM).
    pub(crate) fn sign_device_cert(&self) -> String {
        let params = rcgen::CertificateParams::new(vec!["device".to_owned()]).expect("params");
        params
            .signed_by(&p256(), &self.issuer)
            .expect("signed device cert")
            .pem()
    }
}

/// A fresh self-signed ES256 certificate (ES256_X509_PEM).
pub(crate) fn self_signed_es256_cert() -> String {
    let key = p256();
    rcgen::CertificateParams::new(vec!["device".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed cert")
        .pem()
}
