//! Per-connection quotas of an MQTT session, pure (time is passed in): a token bucket for
//! message rates, and the distinct command-subscription filters a connection may hold.

use std::collections::BTreeSet;

use tokio::time::Instant;

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

/// The command filters of one device: `None` is `commands/#`, `Some(sub)` an exact subfolder.
pub(crate) type CommandFilters = BTreeSet<Option<String>>;

/// Adds `filter` unless it is already there (a repeated SUBSCRIBE costs nothing). `held` counts
/// the distinct filters of the whole connection and may not pass `max`: false when adding would.
pub(crate) fn add_command_filter(
    filters: &mut CommandFilters,
    filter: Option<&str>,
    held: &mut usize,
    max: usize,
) -> bool {
    let filter = filter.map(str::to_owned);
    if filters.contains(&filter) {
        return true;
    }
    if *held >= max {
        return false;
    }
    filters.insert(filter);
    *held += 1;
    true
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
    fn command_filters_are_deduplicated_and_capped_per_connection() {
        let (mut a, mut b, mut held) = (CommandFilters::new(), CommandFilters::new(), 0);
        for _ in 0..1000 {
            assert!(add_command_filter(&mut a, Some("x"), &mut held, 3));
            assert!(add_command_filter(&mut a, None, &mut held, 3));
        }
        assert_eq!((a.len(), held), (2, 2));
        assert!(add_command_filter(&mut b, Some("x"), &mut held, 3));
        assert_eq!(held, 3);
        // The cap counts the connection, not the device; what is held stays allowed.
        assert!(!add_command_filter(&mut b, Some("y"), &mut held, 3));
        assert!(!add_command_filter(&mut a, Some("y"), &mut held, 3));
        assert!(add_command_filter(&mut a, Some("x"), &mut held, 3));
        assert_eq!((a.len(), b.len(), held), (2, 1, 3));
    }
}
