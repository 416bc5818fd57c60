//! Device JWTs (SPEC.md §3): `{"aud": project, "iat", "exp"}` signed ES256 (raw `R‖S`) or
//! RS256 with the device's private key, as the IoT Core samples mint them.
//!
//! The key is parsed once into a [`SigningKey`]; each (re)connect signs a fresh token. This is
//! Perch's one JWT signer: the registry verifies tokens and signs none (its tests, the agent and
//! the bench sign with this). Also the PEM encoding the registry uses for keys it makes.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{DeviceError, Result};

/// Longest JWT lifetime IoT Core accepts (SPEC.md §3: `exp - iat ≤ 24 h`).
pub const JWT_LIFETIME_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// The JWT algorithm a device key signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Es256,
    Rs256,
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "ES256" => Ok(Algorithm::Es256),
            "RS256" => Ok(Algorithm::Rs256),
            _ => Err(format!("`{s}` is not a JWT algorithm; use ES256 or RS256")),
        }
    }
}

enum KeyPair {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A parsed device private key. Its `Debug` never prints key material.
pub struct SigningKey {
    pair: KeyPair,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads the first private key in `pem`: PKCS#8 (`PRIVATE KEY`) for either algorithm, SEC1
    /// (`EC PRIVATE KEY`, as `openssl ecparam -genkey` writes it, `EC PARAMETERS` block or not)
    /// for ES256, PKCS#1 (`RSA PRIVATE KEY`) for RS256. Encrypted keys are refused.
    pub fn from_pem(pem: &[u8], algorithm: Algorithm) -> Result<SigningKey> {
        let bad = |m: String| DeviceError::InvalidPrivateKey(m);
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
            if pem.windows(9).any(|w| w == b"ENCRYPTED") {
                bad("the private key is encrypted; decrypt it with `openssl pkcs8 -topk8 -nocrypt`".into())
            } else {
                bad("no '-----BEGIN PRIVATE KEY-----', 'EC PRIVATE KEY' or 'RSA PRIVATE KEY' PEM block found".into())
            }
        })?;
        let rng = SystemRandom::new();
        let pair = match (algorithm, &der) {
            (Algorithm::Es256, PrivateKeyDer::Pkcs8(_) | PrivateKeyDer::Sec1(_)) => {
                let pkcs8 = match &der {
                    PrivateKeyDer::Sec1(sec1) => sec1_to_pkcs8(sec1.secret_sec1_der())?,
                    _ => der.secret_der().to_vec(),
                };
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
                    .map(KeyPair::Ecdsa)
                    .map_err(|e| bad(format!("not a P-256 private key ({e})")))?
            }
            (Algorithm::Rs256, PrivateKeyDer::Pkcs8(k)) => {
                RsaKeyPair::from_pkcs8(k.secret_pkcs8_der())
                    .map(KeyPair::Rsa)
                    .map_err(|e| bad(format!("not a usable RSA private key ({e})")))?
            }
            (Algorithm::Rs256, PrivateKeyDer::Pkcs1(k)) => {
                RsaKeyPair::from_der(k.secret_pkcs1_der())
                    .map(KeyPair::Rsa)
                    .map_err(|e| bad(format!("not a usable RSA private key ({e})")))?
            }
            (algorithm, _) => {
                return Err(bad(format!(
                    "this kind of key cannot sign {algorithm:?} tokens; check ALGORITHM"
                )));
            }
        };
        Ok(SigningKey { pair, rng })
    }

    /// A fresh P-256 key pair made by `ring`, for a device that provisions itself.
    pub fn generate_es256() -> Result<GeneratedKey> {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let failed = || DeviceError::InvalidPrivateKey("could not generate a P-256 key".into());
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| failed())?;
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|_| failed())?;
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        Ok(GeneratedKey {
            private_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
            public_pem: pem("PUBLIC KEY", &spki),
            key: SigningKey {
                pair: KeyPair::Ecdsa(pair),
                rng,
            },
        })
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        match self.pair {
            KeyPair::Ecdsa(_) => Algorithm::Es256,
            KeyPair::Rsa(_) => Algorithm::Rs256,
        }
    }

    /// Signs `{"aud": project, "iat": issued_at, "exp": issued_at + lifetime}` (whole seconds).
    pub fn sign_jwt(
        &self,
        project: &str,
        issued_at: SystemTime,
        lifetime: Duration,
    ) -> Result<String> {
        let iat = issued_at
            .duration_since(UNIX_EPOCH)
            .map_err(|_| DeviceError::InvalidClaim("the clock is before 1970".into()))?
            .as_secs();
        let exp = iat
            .checked_add(lifetime.as_secs())
            .ok_or_else(|| DeviceError::InvalidClaim("exp is out of range".into()))?;
        let header = match self.algorithm() {
            Algorithm::Es256 => r#"{"alg":"ES256","typ":"JWT"}"#,
            Algorithm::Rs256 => r#"{"alg":"RS256","typ":"JWT"}"#,
        };
        // Written by hand to keep IoT Core's claim order; the project id is JSON-escaped.
        let claims = format!(
            r#"{{"aud":{},"iat":{iat},"exp":{exp}}}"#,
            json_string(project)
        );
        self.sign_compact(header, &claims)
    }

    /// Builds `header.claims.signature` from the two JSON texts as given, signing with this
    /// key's algorithm whatever `header` says: [`SigningKey::sign_jwt`]'s last step, and for
    /// tests that need tokens a verifier must refuse.
    pub fn sign_compact(&self, header_json: &str, claims_json: &str) -> Result<String> {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header_json),
            URL_SAFE_NO_PAD.encode(claims_json)
        );
        let signature = self.sign(input.as_bytes())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let failed = |what: &str| DeviceError::InvalidPrivateKey(format!("{what} signing failed"));
        match &self.pair {
            KeyPair::Ecdsa(key) => key
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| failed("ECDSA")),
            KeyPair::Rsa(key) => {
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, &self.rng, message, &mut out)
                    .map_err(|_| failed("RSA"))?;
                Ok(out)
            }
        }
    }
}

/// A key made by [`SigningKey::generate_es256`]: the key itself, its PKCS#8 PEM (to store, 0600)
/// and its public key PEM (`BEGIN PUBLIC KEY`, to register). `Debug` never prints the private PEM.
pub struct GeneratedKey {
    pub key: SigningKey,
    pub private_pem: String,
    pub public_pem: String,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("public_pem", &self.public_pem)
            .finish_non_exhaustive()
    }
}

/// DER `SubjectPublicKeyInfo` header for a P-256 key; the 65-byte uncompressed point follows.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// `der` as a PEM block with 64-column lines (also the registry's, for keys it makes or reads
/// out of a CSR).
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A JSON string literal for `text`.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Wraps a SEC1 `ECPrivateKey` (RFC 5915) in a PKCS#8 `PrivateKeyInfo` for P-256, which is all
/// `ring` reads. `ring` then checks the inner key, including its optional curve parameters.
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>> {
    /// AlgorithmIdentifier { id-ecPublicKey, prime256v1 }.
    const EC_P256_ALGORITHM: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    /// A P-256 SEC1 key is about 121 bytes; this bound keeps DER lengths to two bytes.
    const SEC1_MAX_BYTES: usize = 1024;
    if sec1.len() > SEC1_MAX_BYTES {
        return Err(DeviceError::InvalidPrivateKey(
            "the EC private key is too long for P-256".into(),
        ));
    }
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(EC_P256_ALGORITHM);
    body.extend(der_tlv(0x04, sec1));
    Ok(der_tlv(0x30, &body))
}

/// Encodes one DER tag-length-value; `content` is under 64 KiB (checked by the caller).
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use ring::signature::{KeyPair as _, UnparsedPublicKey};

    use super::*;

    /// `openssl ecparam -genkey -name prime256v1` (SEC1, with its `EC PARAMETERS` block).
    const EC_PRIVATE_SEC1: &str = "\
-----BEGIN EC PARAMETERS-----\n\
BggqhkjOPQMBBw==\n\
-----END EC PARAMETERS-----\n\
-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEIHWpACV0ZalvNxSy5kZh97MPcipmbXwYcBO4ixjafdCSoAoGCCqGSM49\n\
AwEHoUQDQgAEAzEix+mer9f7Gk+tlAIFjVEBkOO/6bBpPUxj+mmEeXy/J8GujWYN\n\
VG/ztSR6HV33Nw+PtPXAJ4HvDgCeJ/GveA==\n\
-----END EC PRIVATE KEY-----\n\
";

    fn pkcs8_pem() -> (String, Vec<u8>) {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let der = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let public = EcdsaKeyPair::from_pkcs8(alg, der.as_ref(), &rng)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(der.as_ref())
        );
        (pem, public)
    }

    fn check_es256(token: &str, public: &[u8], project: &str, lifetime: u64) {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = URL_SAFE_NO_PAD.decode(parts[0]).unwrap();
        assert_eq!(header, br#"{"alg":"ES256","typ":"JWT"}"#);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], project);
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, lifetime);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(signature.len(), 64, "raw R‖S, not DER");
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, public)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .unwrap();
    }

    #[test]
    fn pkcs8_es256_token_verifies_with_the_public_key() {
        let (pem, public) = pkcs8_pem();
        let key = SigningKey::from_pem(pem.as_bytes(), Algorithm::Es256).unwrap();
        let token = key
            .sign_jwt("my-project", SystemTime::now(), Duration::from_secs(1200))
            .unwrap();
        check_es256(&token, &public, "my-project", 1200);
    }

    #[test]
    fn sec1_key_with_ec_parameters_signs() {
        let key = SigningKey::from_pem(EC_PRIVATE_SEC1.as_bytes(), Algorithm::Es256).unwrap();
        let KeyPair::Ecdsa(pair) = &key.pair else {
            panic!("not ECDSA")
        };
        let public = pair.public_key().as_ref().to_vec();
        let token = key
            .sign_jwt("p\"q", SystemTime::now(), Duration::from_secs(60))
            .unwrap();
        check_es256(&token, &public, "p\"q", 60);
        assert!(!format!("{key:?}").contains("MHc"));
    }

    #[test]
    fn wrong_algorithm_garbage_and_encrypted_keys_are_refused_with_a_reason() {
        let check = |pem: &str, alg, want: &str| {
            let err = SigningKey::from_pem(pem.as_bytes(), alg)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        };
        check(EC_PRIVATE_SEC1, Algorithm::Rs256, "cannot sign Rs256");
        check(
            "garbage",
            Algorithm::Es256,
            "no '-----BEGIN PRIVATE KEY-----'",
        );
        check(
            "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n",
            Algorithm::Es256,
            "no '-----BEGIN PRIVATE KEY-----'",
        );
        check(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            Algorithm::Es256,
            "encrypted",
        );
    }

    #[test]
    fn a_generated_key_round_trips_through_its_pem_and_its_public_key_verifies() {
        let generated = SigningKey::generate_es256().unwrap();
        assert!(
            generated
                .private_pem
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );
        assert!(!format!("{generated:?}").contains("PRIVATE KEY"));
        let reread =
            SigningKey::from_pem(generated.private_pem.as_bytes(), Algorithm::Es256).unwrap();
        let stored = PrivateKeyDer::from_pem_slice(generated.private_pem.as_bytes()).unwrap();
        assert!(matches!(stored, PrivateKeyDer::Pkcs8(_)));
        let body: String = generated
            .public_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(generated.public_pem.lines().all(|l| l.len() <= 64));
        let der = STANDARD.decode(body).unwrap();
        assert_eq!(&der[..P256_SPKI_PREFIX.len()], P256_SPKI_PREFIX);
        let point = &der[P256_SPKI_PREFIX.len()..];
        for key in [&generated.key, &reread] {
            let token = key
                .sign_jwt("p", SystemTime::now(), Duration::from_secs(60))
                .unwrap();
            check_es256(&token, point, "p", 60);
        }
    }

    #[test]
    fn algorithm_names_parse_case_insensitively() {
        assert_eq!("es256".parse::<Algorithm>(), Ok(Algorithm::Es256));
        assert_eq!("RS256".parse::<Algorithm>(), Ok(Algorithm::Rs256));
        assert!("HS256".parse::<Algorithm>().is_err());
    }

    #[test]
    fn compact_tokens_carry_the_header_and_claims_as_given() {
        let (pem, public) = pkcs8_pem();
        let key = SigningKey::from_pem(pem.as_bytes(), Algorithm::Es256).unwrap();
        let token = key
            .sign_compact(r#"{"alg":"none"}"#, r#"{"aud":7}"#)
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[0]).unwrap(),
            br#"{"alg":"none"}"#
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[1]).unwrap(), br#"{"aud":7}"#);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &public)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .unwrap();
    }
}
