//! Rate limits shared by the device bridges: the token bucket that bounds telemetry (per MQTT
//! connection, per device on HTTP), and the per-device limits of the HTTP bridge, whose requests
//! have no connection to hang them on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::BridgeOptions;

/// HTTP-bridge devices whose rate state is kept before idle entries are dropped (default
/// 10,000): an entry idle longer than it takes its bucket to refill carries no information.
pub const HTTP_RATE_ENTRIES_PRUNE_AT: usize = 10_000;

/// A token bucket: `rate` tokens a second, at most `burst` saved up; starts full.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    refilled: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    pub(crate) fn full(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            refilled: now,
            rate,
            burst,
        }
    }

    /// Takes one token; false when none is left.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// One HTTP device's rate state.
#[derive(Debug)]
struct DeviceRate {
    telemetry: TokenBucket,
    last_state: Option<Instant>,
    last_seen: Instant,
}

/// Per-device telemetry and state limits of the HTTP bridge (the same `BridgeOptions` as MQTT).
#[derive(Debug, Default)]
pub(crate) struct DeviceRates {
    devices: Mutex<Devices>,
}

/// The rate state by device, and the size at which idle entries are next dropped: twice what a
/// prune kept (at least `HTTP_RATE_ENTRIES_PRUNE_AT`), so that a fleet of many active devices
/// does not scan the whole map on every new device.
#[derive(Debug, Default)]
struct Devices {
    by_num_id: HashMap<u64, DeviceRate>,
    prune_at: usize,
}

impl DeviceRates {
    fn with<T>(
        &self,
        num_id: u64,
        now: Instant,
        options: &BridgeOptions,
        f: impl FnOnce(&mut DeviceRate) -> T,
    ) -> T {
        let mut guard = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let Devices {
            by_num_id: devices,
            prune_at,
        } = &mut *guard;
        if devices.len() >= (*prune_at).max(HTTP_RATE_ENTRIES_PRUNE_AT)
            && !devices.contains_key(&num_id)
        {
            let refill =
                Duration::from_secs_f64(options.telemetry_burst / options.telemetry_per_second)
                    .max(options.state_min_interval);
            devices.retain(|_, d| now.saturating_duration_since(d.last_seen) < refill);
            *prune_at = 2 * devices.len();
        }
        let device = devices.entry(num_id).or_insert_with(|| DeviceRate {
            telemetry: TokenBucket::full(
                options.telemetry_per_second,
                options.telemetry_burst,
                now,
            ),
            last_state: None,
            last_seen: now,
        });
        device.last_seen = now;
        f(device)
    }

    /// Takes a telemetry token of device `num_id`; false when it is over its rate.
    pub(crate) fn telemetry(&self, num_id: u64, options: &BridgeOptions) -> bool {
        let now = Instant::now();
        self.with(num_id, now, options, |d| d.telemetry.try_take(now))
    }

    /// Records a state report of device `num_id`; false when it comes within
    /// `state_min_interval` of the last accepted one.
    pub(crate) fn state(&self, num_id: u64, options: &BridgeOptions) -> bool {
        let now = Instant::now();
        self.with(num_id, now, options, |d| {
            if d.last_state
                .is_some_and(|last| now < last + options.state_min_interval)
            {
                return false;
            }
            d.last_state = Some(now);
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(2.0, 3.0, t0);
        assert!((0..3).all(|_| bucket.try_take(t0)));
        assert!(!bucket.try_take(t0));
        assert!(bucket.try_take(t0 + Duration::from_millis(500)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(500)));
        // Saving up stops at the burst.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| bucket.try_take(later)));
        assert!(!bucket.try_take(later));
    }

    #[test]
    fn idle_devices_are_dropped_once_the_map_is_full_and_active_ones_kept() {
        let options = BridgeOptions::default();
        let rates = DeviceRates::default();
        let t0 = Instant::now();
        for id in 0..HTTP_RATE_ENTRIES_PRUNE_AT as u64 {
            rates.with(id, t0, &options, |_| ());
        }
        // Much later, one old device is active again just before a new one arrives.
        let later = t0 + Duration::from_secs(3600);
        rates.with(0, later, &options, |_| ());
        rates.with(u64::MAX, later, &options, |_| ());
        let devices = rates.devices.lock().unwrap();
        let mut kept: Vec<u64> = devices.by_num_id.keys().copied().collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            vec![0, u64::MAX],
            "idle entries dropped, active ones kept"
        );
    }

    #[test]
    fn http_devices_are_limited_separately() {
        let options = BridgeOptions {
            telemetry_per_second: 1.0,
            telemetry_burst: 2.0,
            ..Default::default()
        };
        let rates = DeviceRates::default();
        assert!(rates.telemetry(1, &options) && rates.telemetry(1, &options));
        assert!(!rates.telemetry(1, &options), "device 1 is over its burst");
        assert!(rates.telemetry(2, &options), "device 2 has its own bucket");
        assert!(rates.state(1, &options));
        assert!(
            !rates.state(1, &options),
            "a second state within the interval"
        );
        assert!(rates.state(2, &options));
    }
}
