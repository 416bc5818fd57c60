//! Feeds arbitrary text to the two subscription filter parsers that take untrusted input:
//! Pub/Sub subscription filters (`perch_pubsub::filter`, from any admin API client) and MQTT
//! topic names and filters (`perch_bridge::mqtt::topic`, from any connected device).
//!
//! Checks that neither parser panics or recurses without bound, and that a parsed Pub/Sub
//! filter can be evaluated against attributes made from the same bytes.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use perch_bridge::mqtt::topic::{parse_publish, parse_subscribe};
use perch_pubsub::filter::Filter;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_publish(text);
    let _ = parse_subscribe(text);
    if let Ok(filter) = Filter::parse(text) {
        // Attributes from the words of the input, so keys the filter names are often present.
        let attributes: BTreeMap<String, String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| (w.to_owned(), w.to_owned()))
            .collect();
        let _ = filter.matches(&attributes);
        let _ = filter.matches(&BTreeMap::new());
    }
});
