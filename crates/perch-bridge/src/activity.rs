//! Device activity times (`lastHeartbeatTime`, `lastEventTime`, and the `lastConfigSendTime` of
//! HTTP `getConfig`), batched: IoT Core let these lag by minutes, and one registry write per
//! PINGREQ, telemetry message or config fetch would cost an fsync each. They are flushed every `FLUSH_INTERVAL`, `FLUSH_BATCH` devices per store transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use perch_core::{DeviceRef, RegistryName};
use perch_registry::RegistryService;
use tokio::sync::watch;

/// How often activity times reach the registry.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// Devices whose activity one store transaction writes.
const FLUSH_BATCH: usize = 1000;

#[derive(Debug, Default, Clone, Copy)]
struct Times {
    heartbeat: Option<DateTime<Utc>>,
    event: Option<DateTime<Utc>>,
    config_sent: Option<DateTime<Utc>>,
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

    pub(crate) fn config_sent(&self, registry: &RegistryName, num_id: u64, at: DateTime<Utc>) {
        if let Ok(mut p) = self.pending.lock() {
            p.entry((registry.clone(), num_id)).or_default().config_sent = Some(at);
        }
    }

    pub(crate) async fn flush(&self, registry: &RegistryService) {
        let batch: Vec<((RegistryName, u64), Times)> = match self.pending.lock() {
            Ok(mut p) => p.drain().collect(),
            Err(_) => return,
        };
        let mut batch = batch.into_iter().peekable();
        while batch.peek().is_some() {
            let updates = batch
                .by_ref()
                .take(FLUSH_BATCH)
                .map(|((reg, num_id), times)| {
                    let update: Box<dyn FnOnce(&mut perch_core::model::Device) + Send> =
                        Box::new(move |d| {
                            if times.heartbeat.is_some() {
                                d.last_heartbeat_time = times.heartbeat;
                            }
                            if times.event.is_some() {
                                d.last_event_time = times.event;
                            }
                            if times.config_sent.is_some() {
                                d.last_config_send_time = times.config_sent;
                            }
                        });
                    (reg, DeviceRef::NumId(num_id), update)
                })
                .collect();
            if let Err(e) = registry.record_devices_activity(updates).await {
                tracing::warn!(error = %e, "device activity times were not stored");
            }
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
