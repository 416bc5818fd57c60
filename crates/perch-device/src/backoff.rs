//! Reconnect delays: exponential backoff with full jitter.
//!
//! Full jitter (a uniform draw from `[0, min(max, base · 2^attempt)]`) spreads a fleet that lost
//! its server at the same moment, so the reconnect storm after a restart is flattened instead of
//! arriving in synchronized waves. Pure: the random draw is passed in.

use std::time::Duration;

/// First reconnect ceiling.
pub const RECONNECT_BASE_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between two connection attempts.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(60);

/// The state of one reconnect sequence; [`Backoff::reset`] once connected.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(RECONNECT_BASE_DELAY, RECONNECT_MAX_DELAY)
    }
}

impl Backoff {
    /// A backoff whose ceiling starts at `base` and doubles up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay, without drawing it.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay: `unit` (uniform in `[0, 1)`) times the current ceiling; then doubles the
    /// ceiling.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The next delay with a draw from the thread's random generator.
    pub fn next_random_delay(&mut self) -> Duration {
        self.next_delay(rand::random::<f64>())
    }

    /// Back to the first ceiling, after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_max_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let ceilings: Vec<u64> = (0..6)
            .map(|_| {
                let c = b.ceiling().as_secs();
                b.next_delay(0.5);
                c
            })
            .collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 10, 10]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn delay_is_the_draw_times_the_ceiling_and_never_exceeds_it() {
        let mut b = Backoff::new(Duration::from_secs(4), Duration::from_secs(60));
        assert_eq!(b.next_delay(0.25), Duration::from_secs(1));
        assert_eq!(b.next_delay(1.5), Duration::from_secs(8));
        assert_eq!(b.next_delay(-1.0), Duration::ZERO);
        for _ in 0..100 {
            assert!(b.next_random_delay() <= Duration::from_secs(60));
        }
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::default();
        for _ in 0..1000 {
            b.next_delay(0.9);
        }
        assert_eq!(b.ceiling(), RECONNECT_MAX_DELAY);
    }
}
