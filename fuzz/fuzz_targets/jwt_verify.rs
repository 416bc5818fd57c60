//! Feeds arbitrary text as an MQTT password / HTTP bearer token to the device JWT verifier, as a
//! device (or anyone who knows a device id) could.
//!
//! Checks that `verify_device_jwt` never panics on any input, against one ES256 and one RS256
//! credential, at a fixed instant so that the seed tokens in `corpus/jwt_verify` (signed with the
//! matching private keys, iat 1800000000, exp one hour later, aud "p") verify and the fuzzer can
//! mutate from tokens that reach the signature check.
#![no_main]

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use perch_core::model::{DeviceCredential, PublicKeyFormat};
use perch_registry::auth::verify_device_jwt;

const ES256_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE2YFusISCOgB923mS4K4/ctGE1UlT
wu1NuiizleH6aetOt101tayjW0YdoCdXZWDxPc0qSDUZcPybULGG5EFypA==
-----END PUBLIC KEY-----";
const RS256_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA19vM6en7i/rVAZzYFsFl
2rVuifBWKhbTXr4WiMaQAQCEpPpntlKmWIYapylzzbb+1ach1mu9hvfiea0NtAmE
yZa89JzPzHoqeH4la7MFA7jC3NP8hC+u65GSF84hnz/cru9YousHFCiSVxbR2lH8
VrbOpZvGKqOaymSCLLymuSwj38YkF3eP/iAoT9by2t/6ysE6C1SyAoGbiYrRyhM8
0USo1fnj/2VmUevhOYsE9+aswig7uwPPNVlPtnUFWjXXkENOw9xupsCXPTu1fVby
143AqqU9K83xwkFPVDtNX/ACPYO35UXo+2gPgz0zdbCcYGznQfyZnfFxfRxJS0mp
DQIDAQAB
-----END PUBLIC KEY-----";

static CREDENTIALS: LazyLock<Vec<DeviceCredential>> = LazyLock::new(|| {
    [
        (PublicKeyFormat::Es256Pem, ES256_PUBLIC_KEY),
        (PublicKeyFormat::RsaPem, RS256_PUBLIC_KEY),
    ]
    .into_iter()
    .map(|(format, key)| DeviceCredential {
        format,
        key: key.to_owned(),
        expiration_time: None,
    })
    .collect()
});

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let now = DateTime::<Utc>::from_timestamp(1_800_000_060, 0).expect("a valid instant");
    let _ = verify_device_jwt(token, "p", &CREDENTIALS, now);
});
