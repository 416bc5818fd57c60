//! Feeds arbitrary bytes as the JSON body of the admin REST API's create and patch calls.
//!
//! Registry bodies go through the handlers' own parse and domain conversion
//! (`perch_registry::api::check_request_body`: proto3 JSON, ids, enums, timestamps, PEM keys and
//! X.509 certificates); Pub/Sub bodies through the proto3 JSON parse of the messages the REST
//! surface accepts. Checks that nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch_proto::pubsub as ps;

fuzz_target!(|data: &[u8]| {
    perch_registry::api::check_request_body(data);
    let _ = serde_json::from_slice::<ps::PublishRequest>(data);
    let _ = serde_json::from_slice::<ps::Subscription>(data);
    let _ = serde_json::from_slice::<ps::Topic>(data);
    let _ = serde_json::from_slice::<ps::SeekRequest>(data);
});
