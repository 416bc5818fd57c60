//! Wall-clock time behind a trait, so that expiry checks (JWT `iat`/`exp`, credential expiry,
//! ack deadlines) can be tested at any instant.
//!
//! Leases and timers measure elapsed time on the monotonic clock (`Clock::instant`); a manual
//! clock moves that with its wall time, so tests advance both together.

use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;

    /// Monotonic time, for deadlines measured in elapsed time (ack deadlines, backoff).
    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that tests set and advance by hand. Its `instant` starts at the real instant it was
/// made and moves as its wall time moves past the time it was made with (never before that).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    made_at: DateTime<Utc>,
    base: Instant,
}

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now: Mutex::new(at),
            made_at: at,
            base: Instant::now(),
        }
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn instant(&self) -> Instant {
        let elapsed = (self.now() - self.made_at).to_std().unwrap_or_default();
        self.base + elapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_its_instant_with_its_wall_time() {
        let start = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(20_000);
        let clock = ManualClock::new(start);
        let t0 = clock.instant();
        clock.advance(chrono::Duration::seconds(11));
        assert_eq!(clock.now(), start + chrono::Duration::seconds(11));
        assert_eq!(clock.instant() - t0, std::time::Duration::from_secs(11));
        clock.set(start - chrono::Duration::days(1));
        assert_eq!(clock.instant(), t0);
    }
}
