//! Feeds arbitrary bytes to the MQTT 3.1.1 codec, as a device could.
//!
//! Checks that `decode` never panics, and that every packet it returns re-encodes to bytes that
//! decode to the same packet, consuming them exactly. The stable twin of this target is the
//! `arbitrary_bytes_never_panic_and_decoded_packets_reencode_to_themselves` unit test in
//! `crates/perch-bridge/src/mqtt/codec.rs`.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use perch_bridge::mqtt::codec::{DEFAULT_MAX_PACKET_BYTES, decode, encode};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(packet)) = decode(&mut buf, DEFAULT_MAX_PACKET_BYTES) {
        let mut encoded = BytesMut::new();
        encode(&packet, &mut encoded);
        let again = decode(&mut encoded, usize::MAX);
        assert_eq!(
            again,
            Ok(Some(packet)),
            "re-encoded packet decodes differently"
        );
        assert!(
            encoded.is_empty(),
            "re-encoded packet left {} bytes",
            encoded.len()
        );
    }
});
