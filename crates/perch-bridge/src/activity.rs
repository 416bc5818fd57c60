//! Device activity times (`lastHeartbeatTime`, `lastEventTime`), batched: IoT Core let these
//! lag by minutes, and one registry write per PINGREQ or telemetry message would cost an fsync
//! each. They are flushed every `FLUSH_INTERVAL`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use perch_core::{DeviceRef, RegistryName};
use perch_registry::RegistryService;
use tokio::sync::watch;

/// How often activity times reach the registry.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Default, Clone, Copy)]
struct Times {
    heartbeat: Option<DateTime<Utc>>,
    event: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Activity {
    pending: Arc<Mutex<HashMap<(RegistryName, u64), Times>>>,
}

impl Activity {
    pub(crate) fn heartbeat(&self, registry: &RegistryName, num_id: u64, at: DateTime<Utc>) {
        if let Ok(mut p) = self.pending.lock() {
            p.entry((registry.clone(), num_id)).or_default().heartbeat = Some(at);
        }
    }

    pub(crate) fn event(&self, registry: &RegistryName, num_id: u64, at: DateTime<Utc>) {
        if let Ok(mut p) = self.pending.lock() {
            p.entry((registry.clone(), num_id)).or_default().event = Some(at);
        }
    }

    pub(crate) async fn flush(&self, registry: &RegistryService) {
        let batch: Vec<((RegistryName, u64), Times)> = match self.pending.lock() {
            Ok(mut p) => p.drain().collect(),
            Err(_) => return,
        };
        for ((reg, num_id), times) in batch {
            let update = Box::new(move |d: &mut perch_core::model::Device| {
                if times.heartbeat.is_some() {
                    d.last_heartbeat_time = times.heartbeat;
                }
                if times.event.is_some() {
                    d.last_event_time = times.event;
                }
            });
            // A device deleted meanwhile simply has nothing to update.
            let _ = registry
                .record_device_activity(&reg, &DeviceRef::NumId(num_id), update)
                .await;
        }
    }

    pub(crate) async fn run(self, registry: RegistryService, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(&registry).await,
                _ = crate::bridge::stopped(&mut shutdown) => {
                    self.flush(&registry).await;
                    return;
                }
            }
        }
    }
}
