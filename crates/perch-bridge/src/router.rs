//! Telemetry routing and trusted attributes (SPEC.md §6).
//!
//! Every device message reaches Pub/Sub through here: the topic comes from the registry's
//! `eventNotificationConfigs` (first match wins; an empty `subfolderMatches` matches all), and
//! the identity attributes come from the authenticated connection — never from the payload.

use std::collections::BTreeMap;

use perch_core::model::EventNotificationConfig;
use perch_core::{DeviceId, RegistryName};

/// Who an authenticated connection or request speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceIdentity {
    pub registry: RegistryName,
    pub device_id: DeviceId,
    pub num_id: u64,
}

/// The topic telemetry with `subfolder` goes to, if any config matches.
pub fn route<'a>(configs: &'a [EventNotificationConfig], subfolder: &str) -> Option<&'a str> {
    configs
        .iter()
        .find(|c| c.subfolder_matches.is_empty() || c.subfolder_matches == subfolder)
        .map(|c| c.pubsub_topic_name.as_str())
}

/// The attributes Perch stamps on every device message (byte-exact names, SPEC.md §6.1).
pub fn trusted_attributes(identity: &DeviceIdentity, subfolder: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("deviceId".to_owned(), identity.device_id.to_string()),
        ("deviceNumId".to_owned(), identity.num_id.to_string()),
        (
            "deviceRegistryId".to_owned(),
            identity.registry.registry.to_string(),
        ),
        (
            "deviceRegistryLocation".to_owned(),
            identity.registry.location.clone(),
        ),
        ("projectId".to_owned(), identity.registry.project.clone()),
        ("subFolder".to_owned(), subfolder.to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(sub: &str, topic: &str) -> EventNotificationConfig {
        EventNotificationConfig {
            subfolder_matches: sub.into(),
            pubsub_topic_name: topic.into(),
        }
    }

    #[test]
    fn first_match_wins_and_matching_is_exact() {
        let configs = [cfg("alerts", "A"), cfg("", "D")];
        for (sub, want) in [
            ("", "D"),
            ("alerts", "A"),
            ("alerts/high", "D"),
            ("other", "D"),
        ] {
            assert_eq!(route(&configs, sub), Some(want), "{sub:?}");
        }
        // A catch-all first shadows everything after it.
        assert_eq!(
            route(&[cfg("", "D"), cfg("alerts", "A")], "alerts"),
            Some("D")
        );
        assert_eq!(route(&[cfg("alerts", "A")], "other"), None);
        assert_eq!(route(&[], ""), None);
    }

    #[test]
    fn attributes_come_from_the_identity() {
        let identity = DeviceIdentity {
            registry: RegistryName::parse("n", "projects/p1/locations/us-central1/registries/reg")
                .unwrap(),
            device_id: "pi-1".parse().unwrap(),
            num_id: 2808946627307959,
        };
        let a = trusted_attributes(&identity, "");
        assert_eq!(a["deviceId"], "pi-1");
        assert_eq!(a["deviceNumId"], "2808946627307959");
        assert_eq!(a["deviceRegistryId"], "reg");
        assert_eq!(a["deviceRegistryLocation"], "us-central1");
        assert_eq!(a["projectId"], "p1");
        assert_eq!(a["subFolder"], "");
        assert_eq!(a.len(), 6);
    }
}
