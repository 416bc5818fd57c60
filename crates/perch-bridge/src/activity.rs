//! Device activity times (`lastHeartbeatTime`, `lastEventTime`, and the `lastConfigSendTime` of
//! HTTP `getConfig`) and the latest error (`lastErrorTime`, `lastErrorStatus`), batched: IoT Core
//! let these lag by minutes, and one registry write per PINGREQ, telemetry message, config fetch
//! or refused CONNECT would cost an fsync each (and let anyone who knows a device id write to the
//! registry at will). They are flushed every `FLUSH_INTERVAL`, `FLUSH_BATCH` devices per store
//! transaction.
//!
//! Invariant: the pending map holds at most one entry per existing device (callers only report
//! devices they looked up), so however often a device fails, it costs at most one registry write
//! per `FLUSH_INTERVAL`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use perch_core::model::ErrorStatus;
use perch_core::{DeviceRef, ErrorCode, RegistryName};
use perch_registry::RegistryService;
use tokio::sync::watch;

/// How often activity times reach the registry.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// Devices whose activity one store transaction writes.
const FLUSH_BATCH: usize = 1000;

#[derive(Debug, Default, Clone)]
struct Times {
    heartbeat: Option<DateTime<Utc>>,
    event: Option<DateTime<Utc>>,
    /// The latest error since the last flush; earlier ones are overwritten (only the latest is
    /// visible on the device anyway).
    error: Option<(DateTime<Utc>, ErrorStatus)>,
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

    /// Records `lastErrorTime` / `lastErrorStatus` at the next flush.
    pub(crate) fn error(
        &self,
        registry: &RegistryName,
        num_id: u64,
        at: DateTime<Utc>,
        code: ErrorCode,
        message: String,
    ) {
        if let Ok(mut p) = self.pending.lock() {
            let status = ErrorStatus {
                code: code.grpc_code(),
                message,
            };
            p.entry((registry.clone(), num_id)).or_default().error = Some((at, status));
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
                            if let Some((at, status)) = times.error {
                                d.last_error_time = Some(at);
                                d.last_error_status = Some(status);
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
