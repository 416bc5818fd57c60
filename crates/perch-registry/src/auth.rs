//! Device JWT verification (SPEC.md §3): a pure function of the token, the project id, the
//! device's credentials and the current time.
//!
//! Owns the token's shape, its `alg`, the `aud`/`iat`/`exp` claims and the signature check against
//! every usable credential. Signing is the device's (`perch_device::SigningKey`).
//! Does not own finding the device, `blocked`, the registry's MQTT/HTTP state, gateway delegation,
//! reading the clock (the caller passes `now`) or logging.
//! Invariant: no `AuthError` message quotes the token or key material; the one attacker-chosen
//! string it may quote (`alg`) is truncated and reduced to printable ASCII.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use perch_core::model::DeviceCredential;
use ring::signature::{self, UnparsedPublicKey};
use serde_json::{Map, Value};

use crate::keys::{self, KeyAlgorithm};

/// Clock skew allowed on iat/exp (IoT Core: 10 min).
pub const JWT_CLOCK_SKEW: Duration = Duration::minutes(10);
/// Longest token lifetime (IoT Core: 24 h), checked as exp - iat <= 24 h + skew.
pub const JWT_MAX_LIFETIME: Duration = Duration::hours(24);
/// Longest token accepted, in bytes (a 4096-bit RS256 token is ~1 KB).
pub const JWT_MAX_BYTES: usize = 8 * 1024;

/// The time rules a token is held to; `Default` gives IoT Core's (SPEC.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtRules {
    /// Slack on both `iat` (future) and `exp` (past), and on the lifetime limit.
    pub clock_skew: Duration,
    /// Longest `exp - iat`, before adding `clock_skew`.
    pub max_lifetime: Duration,
}

impl Default for JwtRules {
    fn default() -> JwtRules {
        JwtRules {
            clock_skew: JWT_CLOCK_SKEW,
            max_lifetime: JWT_MAX_LIFETIME,
        }
    }
}

/// What a successfully verified token tells the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The `iat` claim (fractions of a second kept).
    pub issued_at: DateTime<Utc>,
    /// The `exp` claim; the connection lives until [`VerifiedToken::lapses_at`].
    pub expires_at: DateTime<Utc>,
    pub algorithm: KeyAlgorithm,
    /// Index into the credentials passed in of the one whose key verified the signature.
    pub credential_index: usize,
}

impl VerifiedToken {
    /// When a connection authenticated by this token must be closed: `exp + skew` (SPEC.md §4.3).
    pub fn lapses_at(&self, rules: &JwtRules) -> DateTime<Utc> {
        self.expires_at
            .checked_add_signed(rules.clock_skew)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// Why a device token was refused. Messages are safe to log and to store as the device's
/// `lastErrorStatus`: they never include the token or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a JWT at all: wrong number of parts, bad base64, bad JSON, no `alg`, too long.
    #[error("the password is not a JWT: {0}")]
    Malformed(String),
    /// The header's `alg` is not RS256 or ES256 (`none`, HS256, PS256, ...).
    #[error("JWT algorithm {0} is not supported; sign with RS256 or ES256")]
    UnsupportedAlgorithm(String),
    /// A JWT whose `aud`, `iat` or `exp` claim is missing or of the wrong type.
    #[error("the JWT claims are invalid: {0}")]
    InvalidClaim(String),
    #[error("the JWT audience (aud) must be the project id `{expected}`")]
    WrongAudience { expected: String },
    #[error(
        "the JWT is not yet valid: iat is more than the allowed clock skew in the future; check the device clock"
    )]
    NotYetValid,
    #[error("the JWT has expired; sign a new one")]
    Expired,
    #[error("the JWT lifetime (exp - iat) is longer than 24 hours")]
    LifetimeTooLong,
    #[error("the device has no unexpired credential for the JWT's algorithm")]
    NoUsableCredential,
    #[error("the JWT signature does not match any of the device's credentials")]
    BadSignature,
}

impl AuthError {
    /// The CONNACK code IoT Core answered: 4 when the password is not a parseable JWT at all
    /// (`Malformed`), 5 for everything else (SPEC.md §4.2).
    pub fn connack_code(&self) -> u8 {
        match self {
            AuthError::Malformed(_) => 4,
            _ => 5,
        }
    }
}

/// Verifies `token` for a device of `project` at `now` under IoT Core's rules ([`JwtRules::default`]).
///
/// Accepts RS256 and ES256 only; `aud` a string equal to `project` (or a one-element array);
/// `iat`/`exp` numbers (floats accepted) with `iat <= now + skew`, `exp + skew >= now` and
/// `exp - iat <= 24 h + skew`. Every credential that is unexpired at `now` and whose key type fits
/// the algorithm is tried; any match authenticates. Base64url with or without `=` padding is
/// accepted, as is the standard alphabet (`+`, `/`); ES256 signatures may be raw `R‖S` or DER.
/// Claims are checked before any signature, so a stale token costs no RSA operation.
pub fn verify_device_jwt(
    token: &str,
    project: &str,
    credentials: &[DeviceCredential],
    now: DateTime<Utc>,
) -> Result<VerifiedToken, AuthError> {
    verify_device_jwt_with(token, project, credentials, now, &JwtRules::default())
}

/// [`verify_device_jwt`] with configured time rules.
pub fn verify_device_jwt_with(
    token: &str,
    project: &str,
    credentials: &[DeviceCredential],
    now: DateTime<Utc>,
    rules: &JwtRules,
) -> Result<VerifiedToken, AuthError> {
    if token.len() > JWT_MAX_BYTES {
        return Err(AuthError::Malformed(format!(
            "it is {} bytes; a JWT has at most {JWT_MAX_BYTES}",
            token.len()
        )));
    }
    // Some firmware ends the password with a newline; whitespace never belongs to a JWT.
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "expected three base64url parts separated by '.'".into(),
        ));
    };
    // The signature covers the text as sent, padding and alphabet included.
    let signing_input = &token.as_bytes()[..header.len() + 1 + claims.len()];
    let header = decode_json_object(header, "header")?;
    let claims = decode_json_object(claims, "claims")?;
    let signature = decode_segment(signature, "signature")?;

    let algorithm = match header.get("alg") {
        Some(Value::String(alg)) if alg == "ES256" => KeyAlgorithm::Es256,
        Some(Value::String(alg)) if alg == "RS256" => KeyAlgorithm::Rs256,
        Some(Value::String(alg)) => {
            return Err(AuthError::UnsupportedAlgorithm(describe_untrusted(alg)));
        }
        Some(_) => {
            return Err(AuthError::Malformed(
                "the header's alg is not a string".into(),
            ));
        }
        None => return Err(AuthError::Malformed("the header has no alg".into())),
    };

    check_audience(&claims, project)?;
    let issued_at = numeric_date(&claims, "iat")?;
    let expires_at = numeric_date(&claims, "exp")?;
    let skew = rules.clock_skew;
    if now.checked_sub_signed(skew).is_some_and(|t| expires_at < t) {
        return Err(AuthError::Expired);
    }
    if now.checked_add_signed(skew).is_some_and(|t| issued_at > t) {
        return Err(AuthError::NotYetValid);
    }
    // Both instants are within chrono's range, so their difference fits a `Duration`.
    let longest = rules
        .max_lifetime
        .checked_add(&skew)
        .unwrap_or(Duration::MAX);
    if expires_at.signed_duration_since(issued_at) > longest {
        return Err(AuthError::LifetimeTooLong);
    }

    let wants_rsa = algorithm == KeyAlgorithm::Rs256;
    let mut usable = 0usize;
    for (index, credential) in credentials.iter().enumerate() {
        if credential.is_expired_at(now) || credential.format.is_rsa() != wants_rsa {
            continue;
        }
        // Stored keys were checked when added; one that no longer parses cannot authenticate.
        let Ok(key) = keys::parse_device_key(credential.format, &credential.key) else {
            continue;
        };
        if key.algorithm != algorithm {
            continue;
        }
        usable += 1;
        if is_signature_valid(algorithm, &key.public_key, signing_input, &signature) {
            return Ok(VerifiedToken {
                issued_at,
                expires_at,
                algorithm,
                credential_index: index,
            });
        }
    }
    Err(if usable == 0 {
        AuthError::NoUsableCredential
    } else {
        AuthError::BadSignature
    })
}

fn is_signature_valid(
    algorithm: KeyAlgorithm,
    public_key: &[u8],
    message: &[u8],
    sig: &[u8],
) -> bool {
    match algorithm {
        KeyAlgorithm::Rs256 => {
            UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, public_key)
                .verify(message, sig)
                .is_ok()
        }
        // JWS says raw R‖S; some firmware sends the DER encoding its crypto library produced.
        KeyAlgorithm::Es256 => {
            (sig.len() == 64
                && UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, public_key)
                    .verify(message, sig)
                    .is_ok())
                || UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, public_key)
                    .verify(message, sig)
                    .is_ok()
        }
    }
}

/// Decodes base64url with or without `=` padding, tolerating the standard alphabet too.
fn decode_segment(segment: &str, what: &str) -> Result<Vec<u8>, AuthError> {
    let unpadded = segment
        .strip_suffix("==")
        .or_else(|| segment.strip_suffix('='))
        .unwrap_or(segment);
    let normalized = if unpadded.contains(['+', '/']) {
        Cow::Owned(unpadded.replace('+', "-").replace('/', "_"))
    } else {
        Cow::Borrowed(unpadded)
    };
    URL_SAFE_NO_PAD
        .decode(normalized.as_bytes())
        .map_err(|_| AuthError::Malformed(format!("the {what} part is not base64url")))
}

fn decode_json_object(segment: &str, what: &str) -> Result<Map<String, Value>, AuthError> {
    match serde_json::from_slice(&decode_segment(segment, what)?) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed(format!(
            "the {what} part is not a JSON object"
        ))),
    }
}

fn check_audience(claims: &Map<String, Value>, project: &str) -> Result<(), AuthError> {
    let audience = match claims.get("aud") {
        Some(Value::String(aud)) => aud,
        Some(Value::Array(list)) => match list.as_slice() {
            [Value::String(aud)] => aud,
            _ => {
                return Err(AuthError::InvalidClaim(
                    "aud must be the project id, or a list of exactly that one string".into(),
                ));
            }
        },
        Some(_) => return Err(AuthError::InvalidClaim("aud is not a string".into())),
        None => {
            return Err(AuthError::InvalidClaim(
                "aud is missing; set it to the project id".into(),
            ));
        }
    };
    if audience != project {
        return Err(AuthError::WrongAudience {
            expected: project.to_owned(),
        });
    }
    Ok(())
}

/// Reads a JWT NumericDate: seconds since the epoch, an integer or a float.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<DateTime<Utc>, AuthError> {
    let invalid = |what: &str| AuthError::InvalidClaim(format!("{name} {what}"));
    let number = match claims.get(name) {
        Some(Value::Number(n)) => n,
        Some(_) => return Err(invalid("is not a number of seconds since the epoch")),
        None => return Err(invalid("is missing")),
    };
    let date = if let Some(seconds) = number.as_i64() {
        DateTime::from_timestamp(seconds, 0)
    } else {
        number.as_f64().filter(|f| f.is_finite()).and_then(|f| {
            let whole = f.floor();
            // `as` saturates; an out-of-range whole is refused by `from_timestamp`.
            let nanos = ((f - whole) * 1e9) as u32;
            DateTime::from_timestamp(whole as i64, nanos.min(999_999_999))
        })
    };
    date.ok_or_else(|| invalid("is out of range"))
}

/// Quotes an attacker-chosen string for an error message: short and printable.
fn describe_untrusted(text: &str) -> String {
    const MAX_CHARS: usize = 16;
    let mut shown: String = text
        .chars()
        .take(MAX_CHARS)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.chars().count() > MAX_CHARS {
        shown.push_str("...");
    }
    format!("`{shown}`")
}

#[cfg(test)]
mod tests {
    use perch_core::model::PublicKeyFormat;
    use perch_device::SigningKey;

    use super::*;

    mod fixtures;
    use fixtures::*;

    type Expected = Result<(KeyAlgorithm, usize), AuthError>;

    fn check(name: &str, token: &str, credentials: &[DeviceCredential], expected: Expected) {
        let got = verify_device_jwt(token, PROJECT, credentials, now())
            .map(|v| (v.algorithm, v.credential_index));
        assert_eq!(got, expected, "case: {name}");
        if let Err(err) = got {
            let message = err.to_string();
            for part in token.split('.').filter(|p| p.len() > 8) {
                assert!(
                    !message.contains(part),
                    "case {name}: message quotes the token"
                );
            }
        }
    }

    #[test]
    fn device_tokens_are_verified_per_spec() {
        use AuthError::*;
        use KeyAlgorithm::{Es256, Rs256};
        let keys = Keys::new();
        let (a, b) = (keys.cred_a(), keys.cred_b());
        let min = Duration::minutes;
        let hour = Duration::hours(1);
        let second = Duration::seconds(1);
        let rs = |pem: &str, project: &str| sign(pem, Rs256, project, now(), hour);
        let claims =
            |aud: &str, iat: &str, exp: &str| format!(r#"{{"aud":{aud},"iat":{iat},"exp":{exp}}}"#);
        let iat = VECTOR_IAT.to_string();
        let exp = (VECTOR_IAT + 3600).to_string();
        let es_header = r#"{"alg":"ES256","typ":"JWT"}"#;
        let good_claims = claims(r#""perch-test""#, &iat, &exp);
        let with_claims = |c: &str| keys.custom(es_header, c);
        let alg_none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&good_claims));
        let mut tampered: Vec<&str> = PYJWT_ES256.split('.').collect();
        let longer_claims = b64(&claims(r#""perch-test""#, &iat, "1700007200"));
        tampered[1] = &longer_claims;
        let sec1_token = sign(EC_PRIVATE_SEC1, Es256, PROJECT, now(), hour);
        let expired_a = expiring(a.clone(), now());

        // One case a line reads best as a table.
        #[rustfmt::skip]
        let cases: Vec<(&str, String, Vec<DeviceCredential>, Expected)> = vec![
            // Signed here, verified here.
            ("es256", keys.es_a(Duration::zero(), hour), vec![a.clone()], Ok((Es256, 0))),
            ("es256 x509", keys.es_a(Duration::zero(), hour), vec![keys.cert_a()], Ok((Es256, 0))),
            ("es256 sec1 key", sec1_token, vec![ec_vector()], Ok((Es256, 0))),
            ("rs256 pkcs8 key", rs(RSA_PRIVATE_PKCS8, PROJECT), vec![rsa()], Ok((Rs256, 0))),
            ("rs256 pkcs1 key", rs(&rsa_private_pkcs1(), PROJECT), vec![rsa()], Ok((Rs256, 0))),
            // Signed by libraries we did not write.
            ("pyjwt es256", PYJWT_ES256.into(), vec![ec_vector()], Ok((Es256, 0))),
            ("pyjwt rs256", PYJWT_RS256.into(), vec![rsa()], Ok((Rs256, 0))),
            ("aud list, float times", PYJWT_ES256_AUD_LIST.into(), vec![ec_vector()], Ok((Es256, 0))),
            ("der signature", CRYPTOGRAPHY_ES256_DER.into(), vec![ec_vector()], Ok((Es256, 0))),
            // Lax encodings.
            ("padded es256", padded(PYJWT_ES256), vec![ec_vector()], Ok((Es256, 0))),
            ("padded rs256", padded(PYJWT_RS256), vec![rsa()], Ok((Rs256, 0))),
            ("std alphabet es256", standard_alphabet(PYJWT_ES256), vec![ec_vector()], Ok((Es256, 0))),
            ("std alphabet rs256", standard_alphabet(PYJWT_RS256), vec![rsa()], Ok((Rs256, 0))),
            ("trailing newline", format!("{PYJWT_ES256}\n"), vec![ec_vector()], Ok((Es256, 0))),
            // Audience.
            ("wrong aud", rs(RSA_PRIVATE_PKCS8, "other"), vec![rsa()], Err(WrongAudience { expected: PROJECT.into() })),
            ("aud list of two", with_claims(&claims(r#"["perch-test","x"]"#, &iat, &exp)), vec![a.clone()],
                Err(InvalidClaim("aud must be the project id, or a list of exactly that one string".into()))),
            ("aud missing", with_claims(&format!(r#"{{"iat":{iat},"exp":{exp}}}"#)), vec![a.clone()],
                Err(InvalidClaim("aud is missing; set it to the project id".into()))),
            ("aud number", with_claims(&claims("7", &iat, &exp)), vec![a.clone()], Err(InvalidClaim("aud is not a string".into()))),
            // Time.
            ("expired beyond skew", keys.es_a(-min(120), min(110) - second), vec![a.clone()], Err(Expired)),
            ("expired exactly skew", keys.es_a(-min(120), min(110)), vec![a.clone()], Ok((Es256, 0))),
            ("expired within skew", keys.es_a(-min(120), min(111)), vec![a.clone()], Ok((Es256, 0))),
            ("iat 11 min ahead", keys.es_a(min(11), hour), vec![a.clone()], Err(NotYetValid)),
            ("iat 10 min ahead", keys.es_a(min(10), hour), vec![a.clone()], Ok((Es256, 0))),
            ("iat 9 min ahead", keys.es_a(min(9), hour), vec![a.clone()], Ok((Es256, 0))),
            ("lifetime 25 h", keys.es_a(-hour, Duration::hours(25)), vec![a.clone()], Err(LifetimeTooLong)),
            ("lifetime 24 h + skew", keys.es_a(-hour, Duration::hours(24) + min(10)), vec![a.clone()], Ok((Es256, 0))),
            ("lifetime 24 h + skew + 1 s", keys.es_a(-hour, Duration::hours(24) + min(10) + second), vec![a.clone()], Err(LifetimeTooLong)),
            ("iat missing", with_claims(&format!(r#"{{"aud":"perch-test","exp":{exp}}}"#)), vec![a.clone()], Err(InvalidClaim("iat is missing".into()))),
            ("iat string", with_claims(&claims(r#""perch-test""#, r#""1700000000""#, &exp)), vec![a.clone()],
                Err(InvalidClaim("iat is not a number of seconds since the epoch".into()))),
            ("exp huge float", with_claims(&claims(r#""perch-test""#, &iat, "1e300")), vec![a.clone()], Err(InvalidClaim("exp is out of range".into()))),
            ("exp i64 max", with_claims(&claims(r#""perch-test""#, &iat, &i64::MAX.to_string())), vec![a.clone()],
                Err(InvalidClaim("exp is out of range".into()))),
            ("exp u64 max", with_claims(&claims(r#""perch-test""#, &iat, &u64::MAX.to_string())), vec![a.clone()],
                Err(InvalidClaim("exp is out of range".into()))),
            // Algorithms.
            ("alg none", alg_none, vec![a.clone()], Err(UnsupportedAlgorithm("`none`".into()))),
            ("alg HS256", keys.custom(r#"{"alg":"HS256"}"#, &good_claims), vec![a.clone()], Err(UnsupportedAlgorithm("`HS256`".into()))),
            ("alg PS256", keys.custom(r#"{"alg":"PS256"}"#, &good_claims), vec![rsa()], Err(UnsupportedAlgorithm("`PS256`".into()))),
            ("alg long", keys.custom(r#"{"alg":"ES256\n0123456789abcdef"}"#, &good_claims), vec![a.clone()],
                Err(UnsupportedAlgorithm("`ES256?0123456789...`".into()))),
            ("alg missing", keys.custom(r#"{"typ":"JWT"}"#, &good_claims), vec![a.clone()], Err(Malformed("the header has no alg".into()))),
            // Credentials.
            ("rs256 vs es256 key only", rs(RSA_PRIVATE_PKCS8, PROJECT), vec![a.clone()], Err(NoUsableCredential)),
            ("no credentials", keys.es_a(Duration::zero(), hour), vec![], Err(NoUsableCredential)),
            ("signer's key expired", keys.es_a(Duration::zero(), hour), vec![expired_a.clone()], Err(NoUsableCredential)),
            ("signer's key expired, other usable", keys.es_a(Duration::zero(), hour), vec![expired_a.clone(), b.clone()], Err(BadSignature)),
            ("rotated key", keys.es_b(), vec![expired_a.clone(), b.clone()], Ok((Es256, 1))),
            ("key expiring later", keys.es_a(Duration::zero(), hour), vec![expiring(a.clone(), now() + second)], Ok((Es256, 0))),
            ("rsa then es256", keys.es_a(Duration::zero(), hour), vec![rsa(), b.clone(), a.clone()], Ok((Es256, 2))),
            ("unparsable stored key", keys.es_a(Duration::zero(), hour), vec![credential(PublicKeyFormat::Es256Pem, "x"), a.clone()], Ok((Es256, 1))),
            ("bad signature", keys.es_a(Duration::zero(), hour), vec![b.clone()], Err(BadSignature)),
            ("tampered claims", tampered.join("."), vec![ec_vector()], Err(BadSignature)),
            // Not a JWT.
            ("garbage", "unused".into(), vec![a.clone()], Err(Malformed("expected three base64url parts separated by '.'".into()))),
            ("empty", String::new(), vec![a.clone()], Err(Malformed("expected three base64url parts separated by '.'".into()))),
            ("four parts", format!("{PYJWT_ES256}.x"), vec![ec_vector()], Err(Malformed("expected three base64url parts separated by '.'".into()))),
            ("bad base64", "a.b.c".into(), vec![a.clone()], Err(Malformed("the header part is not base64url".into()))),
            ("header not json", format!("{}.{}.", b64("nope"), b64(&good_claims)), vec![a.clone()], Err(Malformed("the header part is not a JSON object".into()))),
            ("claims array", format!("{}.{}.", b64(es_header), b64("[]")), vec![a.clone()], Err(Malformed("the claims part is not a JSON object".into()))),
            ("too long", "a".repeat(JWT_MAX_BYTES + 1), vec![a.clone()], Err(Malformed(format!("it is {} bytes; a JWT has at most {JWT_MAX_BYTES}", JWT_MAX_BYTES + 1)))),
        ];
        for (name, token, credentials, expected) in cases {
            check(name, &token, &credentials, expected);
        }
    }

    #[test]
    fn connack_code_is_4_only_when_the_password_is_not_a_jwt() {
        assert_eq!(AuthError::Malformed("x".into()).connack_code(), 4);
        let refused = [
            AuthError::UnsupportedAlgorithm("`none`".into()),
            AuthError::InvalidClaim("iat is missing".into()),
            AuthError::WrongAudience {
                expected: PROJECT.into(),
            },
            AuthError::NotYetValid,
            AuthError::Expired,
            AuthError::LifetimeTooLong,
            AuthError::NoUsableCredential,
            AuthError::BadSignature,
        ];
        for err in refused {
            assert_eq!(err.connack_code(), 5, "{err}");
        }
    }

    #[test]
    fn verified_token_reports_claims_and_lapse() {
        let token =
            verify_device_jwt(PYJWT_ES256_AUD_LIST, PROJECT, &[ec_vector()], now()).unwrap();
        let iat = DateTime::from_timestamp(VECTOR_IAT, 0).unwrap();
        assert_eq!(token.issued_at, iat + Duration::milliseconds(500));
        assert_eq!(token.expires_at, iat + Duration::milliseconds(3_600_250));
        assert_eq!(
            token.lapses_at(&JwtRules::default()),
            token.expires_at + JWT_CLOCK_SKEW
        );
        // Configured rules: no skew at all.
        let strict = JwtRules {
            clock_skew: Duration::zero(),
            max_lifetime: Duration::hours(1),
        };
        let late = token.expires_at + Duration::seconds(1);
        let result = verify_device_jwt_with(PYJWT_ES256, PROJECT, &[ec_vector()], late, &strict);
        assert_eq!(result, Err(AuthError::Expired));
    }

    #[test]
    fn device_signed_tokens_have_the_iot_core_shape() {
        let issued = DateTime::from_timestamp(VECTOR_IAT, 0).unwrap();
        let token = sign(
            RSA_PRIVATE_PKCS8,
            KeyAlgorithm::Rs256,
            PROJECT,
            issued,
            Duration::hours(1),
        );
        let parts: Vec<&str> = token.split('.').collect();
        let header = decode_json_object(parts[0], "header").unwrap();
        let claims = decode_json_object(parts[1], "claims").unwrap();
        assert_eq!(
            Value::Object(header),
            serde_json::json!({"alg": "RS256", "typ": "JWT"})
        );
        assert_eq!(
            Value::Object(claims),
            serde_json::json!({"aud": PROJECT, "iat": VECTOR_IAT, "exp": VECTOR_IAT + 3600})
        );
        // RSA PKCS#1 v1.5 signatures are deterministic: PyJWT signed the same bytes.
        assert_eq!(token, PYJWT_RS256);
    }

    /// The device signer's refusals that need an RSA key (the rest are perch-device's tests).
    #[test]
    fn the_device_signer_refuses_rsa_keys_for_es256() {
        for (pem, expected) in [
            (RSA_PRIVATE_PKCS8.to_owned(), "not a P-256 private key"),
            (rsa_private_pkcs1(), "cannot sign Es256 tokens"),
        ] {
            let err = SigningKey::from_pem(pem.as_bytes(), perch_device::Algorithm::Es256)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err} lacks {expected}");
        }
    }

    /// Cross-check with the `jsonwebtoken` crate: it signs, we verify, and the other way round.
    #[test]
    fn tokens_interoperate_with_the_jsonwebtoken_crate() {
        use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
        let keys = Keys::new();
        let rsa_pkcs1_der = {
            let (_, pem) =
                x509_parser::pem::parse_x509_pem(rsa_private_pkcs1().as_bytes()).unwrap();
            pem.contents
        };
        let claims =
            serde_json::json!({"aud": PROJECT, "iat": VECTOR_IAT + 30, "exp": VECTOR_IAT + 7200});
        let theirs = [
            (
                Algorithm::ES256,
                EncodingKey::from_ec_der(&keys.es_a.serialize_der()),
                keys.cred_a(),
            ),
            (
                Algorithm::RS256,
                EncodingKey::from_rsa_der(&rsa_pkcs1_der),
                rsa(),
            ),
        ];
        for (alg, key, credential) in theirs {
            let token = jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap();
            let verified = verify_device_jwt(&token, PROJECT, &[credential], now()).unwrap();
            assert_eq!(verified.issued_at.timestamp(), VECTOR_IAT + 30, "{alg:?}");
        }

        let ours = [
            (
                Algorithm::ES256,
                KeyAlgorithm::Es256,
                keys.es_a.serialize_pem(),
                keys.cred_a(),
            ),
            (
                Algorithm::ES256,
                KeyAlgorithm::Es256,
                EC_PRIVATE_SEC1.to_owned(),
                ec_vector(),
            ),
            (
                Algorithm::RS256,
                KeyAlgorithm::Rs256,
                rsa_private_pkcs1(),
                rsa(),
            ),
        ];
        for (alg, our_alg, pem, credential) in ours {
            let token = sign(&pem, our_alg, PROJECT, now(), Duration::hours(2));
            let public = keys::parse_device_key(credential.format, &credential.key).unwrap();
            let key = match alg {
                Algorithm::RS256 => DecodingKey::from_rsa_der(&public.public_key),
                _ => DecodingKey::from_ec_der(&public.public_key),
            };
            let mut validation = Validation::new(alg);
            validation.set_audience(&[PROJECT]);
            // `jsonwebtoken` reads the system clock; our `now()` is fixed in 2023.
            validation.validate_exp = false;
            let decoded = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
            assert_eq!(decoded.claims["iat"], now().timestamp(), "{alg:?}");
            assert_eq!(decoded.claims["exp"], now().timestamp() + 7200, "{alg:?}");
        }
    }
}
