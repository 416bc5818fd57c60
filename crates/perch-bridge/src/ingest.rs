//! The one path device messages take to Pub/Sub (SPEC.md §6): telemetry is routed by subfolder
//! (`router::route`), stamped with the trusted attributes of the authenticated identity,
//! published, counted in `perch_device_events_total` and recorded as the device's event
//! activity. The MQTT session (for its own device and for each device attached through a
//! gateway) and the HTTP bridge both go through [`telemetry`]; state notifications go through
//! [`publish`], the same stamping without routing or counting.

use bytes::Bytes;
use perch_core::ErrorCode;
use perch_core::model::Registry;
use perch_pubsub::NewMessage;

use crate::bridge::Inner;
use crate::router::{self, DeviceIdentity};

/// Which bridge a message came through: the `bridge` label of `perch_device_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Mqtt,
    Http,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Mqtt => "mqtt",
            Via::Http => "http",
        }
    }
}

/// Why telemetry did not reach Pub/Sub. Messages carry no bridge prefix: the MQTT bridge adds
/// `mqtt: `.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    #[error("registry `{registry}` has no event notification config for subfolder '{subfolder}'")]
    NoRoute { registry: String, subfolder: String },
    #[error("the telemetry could not be published to `{topic}`: {error}")]
    Publish {
        topic: String,
        error: perch_pubsub::Error,
    },
}

impl IngestError {
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            IngestError::NoRoute { .. } => ErrorCode::FailedPrecondition,
            IngestError::Publish { error, .. } => error.code(),
        }
    }
}

/// Route → trusted attributes → publish → count → record activity, for one telemetry message
/// of `identity` with `subfolder`.
pub(crate) async fn telemetry(
    bridge: &Inner,
    registry: &Registry,
    identity: &DeviceIdentity,
    subfolder: &str,
    data: Bytes,
    via: Via,
) -> Result<(), IngestError> {
    let Some(topic) = router::route(&registry.event_notification_configs, subfolder) else {
        return Err(IngestError::NoRoute {
            registry: registry.id.to_string(),
            subfolder: subfolder.to_owned(),
        });
    };
    publish(bridge, topic, identity, subfolder, data)
        .await
        .map_err(|error| IngestError::Publish {
            topic: topic.to_owned(),
            error,
        })?;
    metrics::counter!("perch_device_events_total", "bridge" => via.label()).increment(1);
    bridge
        .activity
        .event(&identity.registry, identity.num_id, bridge.clock.now());
    Ok(())
}

/// Publishes one message of `identity` to `topic` with the trusted attributes for `subfolder`.
pub(crate) async fn publish(
    bridge: &Inner,
    topic: &str,
    identity: &DeviceIdentity,
    subfolder: &str,
    data: Bytes,
) -> perch_pubsub::Result<()> {
    let message = NewMessage {
        data,
        attributes: router::trusted_attributes(identity, subfolder),
        ordering_key: String::new(),
    };
    bridge.pubsub.publish(topic, vec![message]).await.map(drop)
}
