//! One device's publisher: sleeps until the next slot of its schedule, hands a PUBLISH to
//! rumqttc's channel together with its send time (under the device lock, see `load.rs`), and
//! renews the JWT by letting outstanding publishes finish and disconnecting, since IoT Core has
//! no in-band refresh (as `perch-device` does).
//!
//! Open loop: a slot is never delayed by a slow server. A due publish is skipped, and counted,
//! when the device is disconnected or already has `--max-inflight` awaiting their PUBACK; slots
//! the task wakes too late for (the generator fell behind) are counted too.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::QoS;
use tokio::time::Instant;

use super::load::{Device, Plan, Stats, lock, record};

/// How long a JWT renewal waits for the device's outstanding publishes before disconnecting.
const RENEWAL_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a renewal checks whether the device's publishes have drained.
const RENEWAL_DRAIN_POLL: Duration = Duration::from_millis(5);
/// Bytes of a payload that identify it: device index (u32) and sequence number (u64), big
/// endian. The rest is filler.
pub(super) const STAMP_BYTES: usize = 12;

pub(super) struct Publisher {
    device: Arc<Device>,
    stats: Arc<Stats>,
    renew_after: Option<Duration>,
    plan: Arc<Plan>,
}

enum Refused {
    NotConnected,
    WindowFull,
}

impl Publisher {
    pub(super) fn new(
        device: Arc<Device>,
        stats: Arc<Stats>,
        renew_after: Option<Duration>,
        plan: Arc<Plan>,
    ) -> Publisher {
        Publisher {
            device,
            stats,
            renew_after,
            plan,
        }
    }

    pub(super) async fn run(self) {
        let deadline = self.plan.deadline;
        let Some(mut generation) = self.wait_connected(0).await else {
            return;
        };
        // A random phase spreads the devices' slots evenly over one interval.
        let interval = self.plan.publish_interval;
        let mut next = Instant::now() + interval.mul_f64(rand::random::<f64>());
        let mut sequence = 0u64;
        loop {
            let renew_at = self
                .renew_after
                .map(|after| lock(&self.device.state).connected_at + after);
            let wake = renew_at.map_or(next, |r| r.min(next)).min(deadline);
            tokio::time::sleep_until(wake).await;
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            if renew_at.is_some_and(|r| r <= now) {
                match self.renew(generation).await {
                    Some(g) => generation = g,
                    None => return,
                }
                continue;
            }
            record(&self.stats.schedule_lag, now - next);
            next += interval;
            if next <= now {
                // The generator fell more than a slot behind: skip, and say so in the report.
                let behind = (now - next).as_nanos() / interval.as_nanos().max(1) + 1;
                self.stats
                    .slots_missed
                    .fetch_add(behind as u64, Ordering::Relaxed);
                next += interval * u32::try_from(behind).unwrap_or(u32::MAX);
            }
            match self.try_publish(sequence) {
                Ok(()) => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    sequence += 1;
                }
                Err(Refused::NotConnected) => {
                    self.stats
                        .skipped_not_connected
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(Refused::WindowFull) => {
                    self.stats
                        .skipped_window_full
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Hands one PUBLISH to rumqttc, and its send time to the driver, under the device lock.
    fn try_publish(&self, sequence: u64) -> Result<(), Refused> {
        let payload = payload(self.device.index, sequence, self.plan.size);
        let mut state = lock(&self.device.state);
        if !state.connected {
            return Err(Refused::NotConnected);
        }
        let tracked = self.plan.qos != QoS::AtMostOnce;
        if tracked && state.outstanding() >= self.plan.max_inflight {
            return Err(Refused::WindowFull);
        }
        self.device
            .client
            .try_publish(self.device.topic.as_str(), self.plan.qos, false, payload)
            .map_err(|_| Refused::WindowFull)?;
        if tracked {
            state.unnumbered.push_back(Instant::now());
            self.stats.outstanding.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Waits until a connection newer than `generation` is up; `None` at the deadline.
    async fn wait_connected(&self, generation: u64) -> Option<u64> {
        loop {
            {
                let state = lock(&self.device.state);
                if state.connected && state.generation > generation {
                    return Some(state.generation);
                }
            }
            tokio::select! {
                _ = self.device.connected.notified() => {}
                _ = tokio::time::sleep_until(self.plan.deadline) => return None,
            }
        }
    }

    /// Renews the JWT as IoT Core devices must: let outstanding publishes finish, DISCONNECT,
    /// and let the driver reconnect with a fresh token. Returns the new connection's generation.
    async fn renew(&self, generation: u64) -> Option<u64> {
        let give_up = Instant::now() + RENEWAL_DRAIN_TIMEOUT;
        while lock(&self.device.state).outstanding() > 0 && Instant::now() < give_up {
            tokio::time::sleep(RENEWAL_DRAIN_POLL).await;
        }
        {
            let mut state = lock(&self.device.state);
            if state.generation == generation && state.connected {
                state.connected = false;
                self.stats.connected_now.fetch_sub(1, Ordering::Relaxed);
                self.stats.renewals.fetch_add(1, Ordering::Relaxed);
                let _ = self.device.client.try_disconnect();
            }
        }
        self.wait_connected(generation).await
    }
}

/// `size` bytes: the device index and sequence number (see [`STAMP_BYTES`]), then filler.
/// Payloads shorter than the stamp carry only its first bytes.
pub(super) fn payload(device: usize, sequence: u64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.max(STAMP_BYTES));
    out.extend_from_slice(&u32::try_from(device).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.resize(size.max(STAMP_BYTES), b'x');
    out.truncate(size);
    out
}

/// The device index and sequence number of a payload made by [`payload`].
pub(super) fn parse_stamp(payload: &[u8]) -> Option<(u32, u64)> {
    let device = u32::from_be_bytes(payload.get(0..4)?.try_into().ok()?);
    let sequence = u64::from_be_bytes(payload.get(4..STAMP_BYTES)?.try_into().ok()?);
    Some((device, sequence))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_stamp_and_have_the_asked_size() {
        let p = payload(7, 42, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(parse_stamp(&p), Some((7, 42)));
        assert_eq!(payload(7, 42, 5).len(), 5);
        assert_eq!(parse_stamp(&payload(7, 42, 5)), None);
        assert_eq!(parse_stamp(&payload(1, 2, STAMP_BYTES)), Some((1, 2)));
    }
}
