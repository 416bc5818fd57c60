//! Fixtures of the JWT verification tests: fixed keys and tokens made by other libraries
//! (PyJWT, Python `cryptography`, OpenSSL), keys made per run, and tokens signed by
//! perch-device's signer.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use perch_core::model::{DeviceCredential, PublicKeyFormat};
use perch_device::SigningKey;

use crate::keys::KeyAlgorithm;

pub(super) const PROJECT: &str = "perch-test";
/// The `iat` of the PyJWT vectors; tests run a minute after it.
pub(super) const VECTOR_IAT: i64 = 1_700_000_000;

/// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`.
pub(super) const RSA_PRIVATE_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDcaKrCwz+rPMxM\n\
ouI045Y+ZKbSIcHw9tPRhZhOqnXLLvvF6mZmGaVXdQDZH7nFgXqaobDabLzQ89y0\n\
XIXV7kZrh21XSpMkCT5yelVU7RQ1JAN2cxtoazl9NAg+fkqn2aGKVcvVe8PY4Wsl\n\
cPsPXKxxVqAoOTPSRNodjpbSThkTZDx2ui4Df2gaBC99EgHb0701fg2J/2f24Xg8\n\
/731OrcXf0zAaX/HRSc/L3ADwmVpS+MXCe7TkDeh2tgD44g/ymG2qSZ/k4/y+aQ9\n\
isK988CXPirAM27Dv3ejSDNc0oeQm7vABk5mhSFtNlOwtA7PxyEXl6nekdGXrEo/\n\
DCsi1u43AgMBAAECggEAGlFKcnmrKeCB6coD20TW38RXlvz+PK4m71GrCgRDOcD2\n\
bH9nPVxlPbgezc4tTxlSxmagHgn10bgMlmH7KRGLybMgqdehvMp4cRA3uC2cHWxG\n\
GD1OUdLbyR4OuJzj1SmgpvVE+CIQad51/haAzn4bqRIq4CKpvrsHQELnsgeD6aie\n\
7gX+/SoP0ceS/foojMo6pfYPmt27yvIueS/ukPyzki2gi0G1h9qeiB02ZLokoV2a\n\
YKA6ddL6tIDCoQKjH7YxP+b+d9pQju9Ont7kq3eQpnVIiWBGjbbB3zolE9k03hEb\n\
ywDRlVluauETGhmaNbJuR9Ec3CJfrR3bbQTBGO39YQKBgQDxvPeUw/4A9cw64uVB\n\
NFGNgZLBGX1TjZ/4b20XyBQuEBxQurjlK0USUe10FypOcsygSbD4u8YaRzTCb0wV\n\
JWLNv5++gEmRmXgZIOmjsVXhYYVWz9LcoIbbzuhx8EQB9lDWshVwB8EJm4qF+U1h\n\
Wdu6Vgsuq4ofiegtYBpKuI5RhQKBgQDpaY7ggWEi4gZV3ZJ6BqNPwa32b6K0/n/I\n\
zFwtUlZ/eCVvq8LPmVWr49grZ8zeL97LhLlNTrPO21ekX/IV5lL1V2IX6CU1kvTo\n\
j0xA84cvqhPv8U9uTg5EqFF7cAPgkna28gxff6/ch9c6F9HW4MPiH9RMtExbqULl\n\
P/KXsNhviwKBgQDhm6bE5JXud3f/jTrAu/9QvZklNpDMpeSii/uYslaDFu4WOe3N\n\
k7CHBIdETUpipKls/tl3ime8prAKtqyfH6EyvKBtvnTqufxoF1t2Nk8cZVN4TcVR\n\
u0+hXV162O3flu6jMNjpEZOLT+rcVmtta9ux8BPHnrjt7lsN3h8rlUrdsQKBgQDg\n\
hdKTMMEAbg0MEavxx2rWsIandDE+C0VeIP5V9ksQKMFSDxXA3k1joDLzZdDStZeJ\n\
i603qQobZDCFBGn5GOoZ6CmKt5r7UtZU0mrWW6thdSfieewfPeRJtONUaqbAIgMh\n\
7elq/4dqCh1FW15VZTXn0RhFhHWjAkk//mhb9BfuCwKBgCNjU2HCVpbmMT6LtLOe\n\
b0GPdJ7/+NPM4N8U5EaWxd00+bgm4+nZi4D0w4n1JTKHdqbWn0cr8cS1KD3g54SP\n\
fe3T3p0xV3jc00O8eyXxtTy0/xCRt0XglsBaieuMBtOJe+vIQhdMxe8j5smltStY\n\
JixV9cGvDy3UVxkupssqIxOn\n\
-----END PRIVATE KEY-----\n\
";
/// `openssl pkey -pubout` of `RSA_PRIVATE_PKCS8`.
pub(super) const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA3GiqwsM/qzzMTKLiNOOW\n\
PmSm0iHB8PbT0YWYTqp1yy77xepmZhmlV3UA2R+5xYF6mqGw2my80PPctFyF1e5G\n\
a4dtV0qTJAk+cnpVVO0UNSQDdnMbaGs5fTQIPn5Kp9mhilXL1XvD2OFrJXD7D1ys\n\
cVagKDkz0kTaHY6W0k4ZE2Q8drouA39oGgQvfRIB29O9NX4Nif9n9uF4PP+99Tq3\n\
F39MwGl/x0UnPy9wA8JlaUvjFwnu05A3odrYA+OIP8phtqkmf5OP8vmkPYrCvfPA\n\
lz4qwDNuw793o0gzXNKHkJu7wAZOZoUhbTZTsLQOz8chF5ep3pHRl6xKPwwrItbu\n\
NwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";
/// `openssl ecparam -genkey -name prime256v1` (SEC1, with its `EC PARAMETERS` block).
pub(super) const EC_PRIVATE_SEC1: &str = "\
-----BEGIN EC PARAMETERS-----\n\
BggqhkjOPQMBBw==\n\
-----END EC PARAMETERS-----\n\
-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEIHWpACV0ZalvNxSy5kZh97MPcipmbXwYcBO4ixjafdCSoAoGCCqGSM49\n\
AwEHoUQDQgAEAzEix+mer9f7Gk+tlAIFjVEBkOO/6bBpPUxj+mmEeXy/J8GujWYN\n\
VG/ztSR6HV33Nw+PtPXAJ4HvDgCeJ/GveA==\n\
-----END EC PRIVATE KEY-----\n\
";
/// `openssl ec -pubout` of `EC_PRIVATE_SEC1`.
pub(super) const EC_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEAzEix+mer9f7Gk+tlAIFjVEBkOO/\n\
6bBpPUxj+mmEeXy/J8GujWYNVG/ztSR6HV33Nw+PtPXAJ4HvDgCeJ/GveA==\n\
-----END PUBLIC KEY-----\n\
";
// Made by PyJWT 2.15.1 (`jwt.encode`) with the keys above: aud `perch-test`, iat 1700000000,
// exp iat + 3600. The list vector has aud ["perch-test"], iat 1700000000.5, exp 1700003600.25.
pub(super) const PYJWT_ES256: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJwZXJjaC10ZXN0IiwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDM2MDB9.7tZe1vilBNLLCje-egtEiDwQNts7tSlBg5Fi7IzoRz0FMQcW5liN0Zih1m_MgfVRezA5ctcR_QtL7LHAFcoJHw";
pub(super) const PYJWT_RS256: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJwZXJjaC10ZXN0IiwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDM2MDB9.nB4X_qkKnJcXkH2XLmXiu8ePuQz1WlPMNQpeedvcBiMfujpr9y_2mHC1ZMvKhtznhTpw7oBTbPVKDQUnfJOl361EW41DwBBqzMdQ4Rbo4IVb6gWRvrsvazj8_xq2kCBHOfYxfWEYohKepNaCKusig0CnCA-Kne_g3Swm5KCTFdQqGI-xMssh5bofzgJZAwhLBsgEhl05d3y0wjYgzR2btMIYO5wYb1_zOcv4oaU9Bn97ns7Uh765azaLDkdDHNbKYGWGCfaDjl5IHEWHsZzIwVidbS2k70zztkTY9pq1uVMgV-4kJ2IjrKnswbNDv3VrT2iSbu4TpEpDEuz347aDnw";
pub(super) const PYJWT_ES256_AUD_LIST: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOlsicGVyY2gtdGVzdCJdLCJpYXQiOjE3MDAwMDAwMDAuNSwiZXhwIjoxNzAwMDAzNjAwLjI1fQ.jDvXR95ETP0qCYEuA7oOI4MpFA1wmqrANVjrFjDicD_ltLLrjEJsJcihHP_OvvSRAggKfxaGBLGy-8Q097qz1w";
/// PyJWT's ES256 signing input, signed by Python `cryptography` with a DER signature.
pub(super) const CRYPTOGRAPHY_ES256_DER: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJwZXJjaC10ZXN0IiwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDM2MDB9.MEQCIB7_n_MYq43eScy7borRUMoWWE2VzNiPiHL9X4QJzlppAiBrLzavAu-NQiGSRH5kDGM91aE1A93hHUrcRJ2-vqpMkw";

pub(super) fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(VECTOR_IAT + 60, 0).unwrap()
}

/// A device token from perch-device's signer (Perch's one), issued at `issued_at`.
pub(super) fn sign(
    pem: &str,
    algorithm: KeyAlgorithm,
    project: &str,
    issued_at: DateTime<Utc>,
    lifetime: Duration,
) -> String {
    let algorithm = match algorithm {
        KeyAlgorithm::Es256 => perch_device::Algorithm::Es256,
        KeyAlgorithm::Rs256 => perch_device::Algorithm::Rs256,
    };
    let issued_at = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(issued_at.timestamp().try_into().unwrap());
    SigningKey::from_pem(pem.as_bytes(), algorithm)
        .unwrap()
        .sign_jwt(project, issued_at, lifetime.to_std().unwrap())
        .unwrap()
}

pub(super) fn credential(format: PublicKeyFormat, key: &str) -> DeviceCredential {
    DeviceCredential {
        format,
        key: key.to_owned(),
        expiration_time: None,
    }
}

pub(super) fn expiring(mut credential: DeviceCredential, at: DateTime<Utc>) -> DeviceCredential {
    credential.expiration_time = Some(at);
    credential
}

pub(super) fn b64(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

/// Adds `=` padding to every part, as a lax encoder would.
pub(super) fn padded(token: &str) -> String {
    let parts: Vec<String> = token
        .split('.')
        .map(|p| format!("{p}{}", "=".repeat((4 - p.len() % 4) % 4)))
        .collect();
    parts.join(".")
}

pub(super) fn standard_alphabet(token: &str) -> String {
    token.replace('-', "+").replace('_', "/")
}

/// `RSA_PRIVATE_PKCS8` as a PKCS#1 `RSA PRIVATE KEY` PEM (`openssl rsa -traditional`).
pub(super) fn rsa_private_pkcs1() -> String {
    let (_, pem) = x509_parser::pem::parse_x509_pem(RSA_PRIVATE_PKCS8.as_bytes()).unwrap();
    // For this key, PrivateKeyInfo's OCTET STRING header (04 82 04 a8) ends at byte 26 and
    // wraps the RSAPrivateKey.
    assert_eq!(pem.contents[22..26], [0x04, 0x82, 0x04, 0xa8]);
    let body = STANDARD.encode(&pem.contents[26..]);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

/// Keys made for this run, plus credentials for them and for the fixed vectors.
pub(super) struct Keys {
    pub(super) es_a: rcgen::KeyPair,
    pub(super) es_b: rcgen::KeyPair,
}

impl Keys {
    pub(super) fn new() -> Keys {
        let generate = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Keys {
            es_a: generate(),
            es_b: generate(),
        }
    }

    pub(super) fn cred_a(&self) -> DeviceCredential {
        credential(PublicKeyFormat::Es256Pem, &self.es_a.public_key_pem())
    }

    pub(super) fn cred_b(&self) -> DeviceCredential {
        credential(PublicKeyFormat::Es256Pem, &self.es_b.public_key_pem())
    }

    pub(super) fn cert_a(&self) -> DeviceCredential {
        let cert = rcgen::CertificateParams::new(vec!["device".into()])
            .unwrap()
            .self_signed(&self.es_a)
            .unwrap();
        credential(PublicKeyFormat::Es256X509Pem, &cert.pem())
    }

    /// An ES256 token by key A, issued `offset` after `now()`.
    pub(super) fn es_a(&self, offset: Duration, lifetime: Duration) -> String {
        let pem = self.es_a.serialize_pem();
        sign(&pem, KeyAlgorithm::Es256, PROJECT, now() + offset, lifetime)
    }

    pub(super) fn es_b(&self) -> String {
        let pem = self.es_b.serialize_pem();
        sign(
            &pem,
            KeyAlgorithm::Es256,
            PROJECT,
            now(),
            Duration::hours(1),
        )
    }

    /// A token by key A with the given header and claims.
    pub(super) fn custom(&self, header: &str, claims: &str) -> String {
        SigningKey::from_pem(
            self.es_a.serialize_pem().as_bytes(),
            perch_device::Algorithm::Es256,
        )
        .unwrap()
        .sign_compact(header, claims)
        .unwrap()
    }
}

pub(super) fn rsa() -> DeviceCredential {
    credential(PublicKeyFormat::RsaPem, RSA_PUBLIC)
}

pub(super) fn ec_vector() -> DeviceCredential {
    credential(PublicKeyFormat::Es256Pem, EC_PUBLIC)
}
