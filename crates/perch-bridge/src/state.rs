//! Device state reports, shared by the MQTT and HTTP bridges: stored always (10 kept by the
//! store), then sent to the registry's state topic as a best-effort notification (SPEC.md §4.6).

use bytes::Bytes;
use perch_core::Rejection;
use perch_core::model::{Device, DeviceState, Registry};

use crate::bridge::Inner;
use crate::ingest;
use crate::router::DeviceIdentity;

pub(crate) async fn store_state(
    bridge: &Inner,
    identity: &DeviceIdentity,
    registry: &Registry,
    data: Bytes,
) -> Result<(), Rejection> {
    let now = bridge.clock.now();
    let stored = data.to_vec();
    let update = Box::new(move |d: &mut Device| {
        // Two reports within one clock tick must still be distinct history entries.
        let at = match &d.state {
            Some(s) if s.update_time >= now => s.update_time + chrono::Duration::microseconds(1),
            _ => now,
        };
        d.state = Some(DeviceState {
            update_time: at,
            binary_data: stored,
        });
        d.last_state_time = Some(at);
    });
    bridge
        .record(identity, update)
        .await
        .map_err(|e| Rejection::new(e.code(), e.to_string()))?;
    if !registry.state_notification_topic.is_empty() {
        let topic = &registry.state_notification_topic;
        if let Err(e) = ingest::publish(bridge, topic, identity, "", data).await {
            tracing::debug!(device = %identity.device_id, error = %e, "state notification skipped");
        }
    }
    Ok(())
}
