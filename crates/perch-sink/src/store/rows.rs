//! What goes into the store and what comes out: a pulled message to keep (`Row`), a query
//! (`Query`) and what it returns (`Point`, `Anomaly`), the live feed's announcements (`Stored`),
//! and what a retention pass deleted (`Purged`).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// A message to keep: where it came from and what it carried.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The sink subscription it was pulled from (`projects/P/subscriptions/S`).
    pub subscription: String,
    /// Its Pub/Sub message id (the topic's sequence number).
    pub message_id: u64,
    pub project: String,
    pub topic: String,
    pub publish_time: DateTime<Utc>,
    pub attributes: BTreeMap<String, String>,
    pub data: Vec<u8>,
}

/// Which points a query wants; `project` is required, the rest narrow it.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub project: String,
    pub device_id: Option<String>,
    pub registry_id: Option<String>,
    pub sub_folder: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The newest `limit` points of the range are returned, oldest first.
    pub limit: usize,
}

/// One stored message as queries return it (JSON: camelCase, like Pub/Sub's).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    pub message_id: String,
    pub publish_time: DateTime<Utc>,
    pub topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_num_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_registry_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_registry_location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_folder: Option<String>,
    pub attributes: BTreeMap<String, String>,
    /// The payload, base64 (as in Pub/Sub's JSON).
    pub data: String,
    /// The payload parsed, when it is JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
}

impl Point {
    /// A point as queries return it, from its stored parts.
    pub(super) fn new(
        message_id: u64,
        publish_time: DateTime<Utc>,
        topic: String,
        attributes: BTreeMap<String, String>,
        data: &[u8],
    ) -> Point {
        let a = |k: &str| attributes.get(k).cloned();
        Point {
            message_id: message_id.to_string(),
            publish_time,
            topic,
            device_id: a("deviceId"),
            device_num_id: a("deviceNumId"),
            device_registry_id: a("deviceRegistryId"),
            device_registry_location: a("deviceRegistryLocation"),
            sub_folder: a("subFolder"),
            json: serde_json::from_slice(data).ok(),
            data: STANDARD.encode(data),
            attributes,
        }
    }

    pub(super) fn from_row(r: &Row) -> Point {
        Point::new(
            r.message_id,
            r.publish_time,
            r.topic.clone(),
            r.attributes.clone(),
            &r.data,
        )
    }
}

/// A reading an anomaly model flagged (JSON: camelCase).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Anomaly {
    pub message_id: String,
    pub publish_time: DateTime<Utc>,
    pub device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_registry_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_folder: Option<String>,
    /// The payload field, e.g. `temperature_c`.
    pub field: String,
    pub value: f64,
    /// What the model expected: its mean and standard deviation before this reading.
    pub mean: f64,
    pub std: f64,
    /// (value - mean) / std.
    pub z: f64,
}

/// What the store announces once a batch is committed (the dashboard's live feed).
#[derive(Debug, Clone)]
pub enum Stored {
    Point { project: String, point: Point },
    Anomaly { project: String, anomaly: Anomaly },
}

/// What one retention pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Purged {
    /// Telemetry rows.
    pub rows: usize,
    /// Model series.
    pub series: usize,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_point_carries_the_trusted_attributes_and_its_payload_as_base64_and_json() {
        let row = Row {
            subscription: "projects/p/subscriptions/perch-sink-a".into(),
            message_id: 7,
            project: "p".into(),
            topic: "projects/p/topics/t".into(),
            publish_time: Utc.timestamp_millis_opt(1_000).unwrap(),
            attributes: [
                ("deviceId".to_owned(), "pi-1".to_owned()),
                ("deviceNumId".to_owned(), "42".to_owned()),
                ("deviceRegistryId".to_owned(), "reg".to_owned()),
                (
                    "deviceRegistryLocation".to_owned(),
                    "us-central1".to_owned(),
                ),
            ]
            .into(),
            data: br#"{"t": 1.5}"#.to_vec(),
        };
        let point = Point::from_row(&row);
        assert_eq!(point.message_id, "7");
        assert_eq!(point.device_id.as_deref(), Some("pi-1"));
        assert_eq!(point.device_num_id.as_deref(), Some("42"));
        assert_eq!(point.device_registry_id.as_deref(), Some("reg"));
        assert_eq!(
            point.device_registry_location.as_deref(),
            Some("us-central1")
        );
        assert_eq!(point.sub_folder, None);
        assert_eq!(point.data, STANDARD.encode(&row.data));
        assert_eq!(point.json, Some(serde_json::json!({"t": 1.5})));
        let json = serde_json::to_value(&point).unwrap();
        assert!(
            json.get("subFolder").is_none(),
            "absent attributes are left out: {json}"
        );
        assert_eq!(json["deviceRegistryId"], "reg");
    }
}
