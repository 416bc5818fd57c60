//! Feeds arbitrary bytes as a provisioning request, as any device holding a bootstrap key (one
//! key shared by a whole batch, so assume an attacker has it) could send over MQTT or HTTPS.
//!
//! Runs `perch_registry::provisioning::check_request_body`: the JSON parse, the claim size
//! limits, the public key or CSR (PEM, PKCS#10, signature, key parse) and the id glob. Checks
//! that nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    perch_registry::provisioning::check_request_body(data);
});
