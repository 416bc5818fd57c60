//! The agent's tasks: a reading loop that queues readings on disk, a sender that drains the
//! queue in order over MQTT (deleting each reading only after its PUBACK), an event loop that
//! applies config and logs commands and connection changes, and a state reporter.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use perch_device::{DeviceClient, DeviceError, DeviceEvent};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::config::AgentConfig;
use crate::queue::Queue;
use crate::sensors::{self, SensorReading, Simulator};

/// Readings published before waiting for their PUBACKs (below the client's outstanding cap).
const SEND_WINDOW: usize = 16;
/// Shortest and longest reading interval a config may ask for.
pub(crate) const INTERVAL_MIN_SECS: u64 = 1;
pub(crate) const INTERVAL_MAX_SECS: u64 = 24 * 60 * 60;
/// IoT Core advised at most one state update per 10 s per device (SPEC.md §4.6).
const STATE_MIN_SPACING: Duration = Duration::from_secs(10);

/// What the state report and the tasks share.
#[derive(Debug, Default)]
pub(crate) struct Status {
    pub(crate) sensors: Vec<String>,
    pub(crate) last_error: Option<String>,
}

/// Shared by every task.
#[derive(Debug)]
pub(crate) struct Agent {
    pub(crate) config: AgentConfig,
    /// The device id (from the config, the id file, or provisioning).
    pub(crate) device: String,
    pub(crate) client: DeviceClient,
    pub(crate) queue: Arc<Mutex<Queue>>,
    pub(crate) queued: Notify,
    pub(crate) status: Mutex<Status>,
    pub(crate) state_dirty: Notify,
    pub(crate) interval: watch::Sender<Duration>,
    pub(crate) connected: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Serialize)]
struct Reading<'a> {
    device_id: &'a str,
    sensor_id: &'a str,
    temperature_c: f64,
    timestamp: String,
    seq: u64,
}

#[derive(Serialize)]
struct StateReport<'a> {
    agent_version: &'a str,
    sensors: &'a [String],
    queue_depth: usize,
    dropped_readings: u64,
    interval_s: u64,
    last_error: Option<&'a str>,
}

impl Agent {
    pub(crate) fn queue_depth(&self) -> usize {
        lock(&self.queue).len()
    }

    fn set_error(&self, error: Option<String>) {
        let mut status = lock(&self.status);
        if status.last_error != error && error.is_some() {
            status.last_error = error;
            drop(status);
            self.state_dirty.notify_one();
        }
    }

    /// One reading cycle: read every sensor, queue each good reading durably.
    pub(crate) async fn read_cycle(self: &Arc<Self>, simulator: &Option<Mutex<Simulator>>) {
        let readings: Result<Vec<SensorReading>, String> = match simulator {
            Some(sim) => Ok(lock(sim).read_all()),
            None => {
                let dir = self.config.w1_devices_dir.clone();
                tokio::task::spawn_blocking(move || sensors::read_all(&dir))
                    .await
                    .unwrap_or_else(|e| Err(format!("sensor thread failed: {e}")))
            }
        };
        let readings = match readings {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "no sensors read");
                self.set_error(Some(e));
                return;
            }
        };
        if readings.is_empty() {
            let e = format!(
                "no DS18B20 sensors (28-*/w1_slave) under {}",
                self.config.w1_devices_dir.display()
            );
            tracing::error!(error = %e, "no sensors read");
            self.set_error(Some(e));
        }
        let ids: Vec<String> = readings.iter().map(|r| r.sensor_id.clone()).collect();
        {
            let mut status = lock(&self.status);
            if status.sensors != ids {
                tracing::info!(sensors = %ids.join(","), "sensors found");
                status.sensors = ids;
                drop(status);
                self.state_dirty.notify_one();
            }
        }
        for reading in readings {
            match reading.result {
                Ok(temperature_c) => self.enqueue(&reading.sensor_id, temperature_c).await,
                Err(e) => {
                    tracing::warn!(sensor = %reading.sensor_id, error = %e, "reading skipped");
                    self.set_error(Some(format!("{}: {e}", reading.sensor_id)));
                }
            }
        }
    }

    async fn enqueue(self: &Arc<Self>, sensor_id: &str, temperature_c: f64) {
        let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let device_id = self.device.clone();
        let sensor = sensor_id.to_owned();
        let queue = self.queue.clone();
        let pushed = tokio::task::spawn_blocking(move || {
            let mut queue = lock(&queue);
            let result = queue.push(|seq| {
                let reading = Reading {
                    device_id: &device_id,
                    sensor_id: &sensor,
                    temperature_c,
                    timestamp,
                    seq,
                };
                serde_json::to_vec(&reading).unwrap_or_default()
            });
            result.map(|(seq, dropped)| (seq, dropped, queue.len()))
        })
        .await;
        match pushed {
            Ok(Ok((seq, dropped, depth))) => {
                tracing::info!(sensor = %sensor_id, temperature_c, seq, queue_depth = depth, "reading queued");
                if dropped > 0 {
                    tracing::error!(dropped, "queue full: oldest readings dropped unsent");
                }
                self.queued.notify_one();
            }
            Ok(Err(e)) => {
                tracing::error!(sensor = %sensor_id, error = %e, dir = %self.config.queue_dir.display(), "reading lost: cannot write the queue");
                self.set_error(Some(format!("queue write failed: {e}")));
            }
            Err(e) => tracing::error!(error = %e, "queue thread failed"),
        }
    }

    /// Drains the queue in order forever; each reading leaves it only after its PUBACK.
    pub(crate) async fn send_loop(self: Arc<Self>) {
        let topic = self.client.topics().events(&self.config.subfolder);
        let mut connected = self.connected.subscribe();
        loop {
            if !self.client.is_connected() {
                tokio::select! {
                    _ = connected.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let queue = self.queue.clone();
            let batch = tokio::task::spawn_blocking(move || lock(&queue).peek(SEND_WINDOW)).await;
            let batch = match batch {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the queue");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
                Err(_) => continue,
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = self.queued.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
            let mut pending = Vec::with_capacity(batch.len());
            for (seq, bytes) in batch {
                match self.client.start_publish(&topic, bytes) {
                    Ok(ack) => pending.push((seq, ack)),
                    Err(_) => break,
                }
            }
            let mut failed = pending.is_empty();
            for (seq, ack) in pending {
                if failed {
                    continue; // The rest failed with the connection; they stay queued.
                }
                match ack.wait().await {
                    Ok(()) => {
                        let queue = self.queue.clone();
                        let removed = tokio::task::spawn_blocking(move || {
                            let mut q = lock(&queue);
                            q.remove(seq).map(|()| q.len())
                        })
                        .await;
                        match removed {
                            Ok(Ok(depth)) => {
                                tracing::info!(seq, queue_depth = depth, "reading published")
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(seq, error = %e, "published reading not deleted; it will be sent again")
                            }
                            Err(_) => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(seq, error = %e, "publish not acknowledged; will retry");
                        failed = true;
                    }
                }
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Applies config, logs commands and connection changes.
    pub(crate) async fn event_loop(self: Arc<Self>, mut events: mpsc::Receiver<DeviceEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                DeviceEvent::Connected => {
                    tracing::info!(host = %self.config.host, port = self.config.port, "connected");
                    self.connected.send_replace(true);
                    self.state_dirty.notify_one();
                }
                DeviceEvent::Disconnected { error, retry_in } => {
                    self.connected.send_replace(false);
                    tracing::warn!(error = %error, retry_in_ms = retry_in.as_millis() as u64, "disconnected");
                    if !retry_in.is_zero() {
                        self.set_error(Some(error));
                    }
                }
                DeviceEvent::Config(bytes) => self.apply_config(&bytes),
                DeviceEvent::Command { subfolder, payload } => {
                    let text = String::from_utf8_lossy(&payload);
                    let shown: String = text.chars().take(200).collect();
                    tracing::info!(subfolder = %subfolder, bytes = payload.len(), command = ?shown, "command received");
                }
                DeviceEvent::SubscriptionRefused { filter } => {
                    tracing::error!(%filter, "subscription refused by the server");
                }
            }
        }
    }

    fn apply_config(&self, bytes: &[u8]) {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            tracing::info!("config received: empty; keeping the current interval");
            return;
        }
        match parse_interval(bytes) {
            Ok(Some(secs)) => {
                let interval = Duration::from_secs(secs);
                if *self.interval.borrow() != interval {
                    self.interval.send_replace(interval);
                    self.state_dirty.notify_one();
                }
                tracing::info!(interval_s = secs, "config applied");
            }
            Ok(None) => tracing::info!(
                bytes = bytes.len(),
                "config received: no interval_s; nothing to change"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "config ignored");
                self.set_error(Some(format!("config ignored: {e}")));
            }
        }
    }

    /// Publishes the device state when something changed, at most once per 10 s.
    pub(crate) async fn state_loop(self: Arc<Self>) {
        let topic = self.client.topics().state();
        let mut last: Option<Instant> = None;
        loop {
            self.state_dirty.notified().await;
            if let Some(at) = last {
                tokio::time::sleep_until(at + STATE_MIN_SPACING).await;
            }
            if !self.client.is_connected() {
                continue; // Reported again on the next Connected.
            }
            let body = {
                let status = lock(&self.status);
                let (depth, dropped) = {
                    let q = lock(&self.queue);
                    (q.len(), q.dropped())
                };
                serde_json::to_vec(&StateReport {
                    agent_version: env!("CARGO_PKG_VERSION"),
                    sensors: &status.sensors,
                    queue_depth: depth,
                    dropped_readings: dropped,
                    interval_s: self.interval.borrow().as_secs(),
                    last_error: status.last_error.as_deref(),
                })
                .unwrap_or_default()
            };
            last = Some(Instant::now());
            match self.client.publish(&topic, body).await {
                Ok(()) => tracing::info!("state published"),
                Err(DeviceError::NotConnected) => {}
                Err(e) => tracing::warn!(error = %e, "state not published"),
            }
        }
    }
}

/// `{"interval_s": N}` → `Some(N)`; other fields are ignored (newer servers may send more).
pub(crate) fn parse_interval(bytes: &[u8]) -> Result<Option<u64>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let Some(object) = value.as_object() else {
        return Err("not a JSON object".into());
    };
    match object.get("interval_s") {
        None => Ok(None),
        Some(n) => match n.as_u64() {
            Some(secs) if (INTERVAL_MIN_SECS..=INTERVAL_MAX_SECS).contains(&secs) => Ok(Some(secs)),
            _ => Err(format!(
                "interval_s must be a whole number of seconds from {INTERVAL_MIN_SECS} to {INTERVAL_MAX_SECS}, not {n}"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_interval_is_parsed_and_bounded() {
        assert_eq!(parse_interval(br#"{"interval_s": 5}"#), Ok(Some(5)));
        assert_eq!(parse_interval(br#"{"other": 1}"#), Ok(None));
        assert!(parse_interval(br#"{"interval_s": 0}"#).is_err());
        assert!(parse_interval(br#"{"interval_s": 1.5}"#).is_err());
        assert!(parse_interval(b"[1]").is_err());
        assert!(parse_interval(b"interval=5").is_err());
    }
}
