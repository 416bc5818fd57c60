//! What every benchmark measures with and prints in: latency histograms in microseconds and the
//! number formats of the tables.

use std::time::Duration;

use hdrhistogram::Histogram;
use perch_core::Clock;
use serde::Serialize;

/// Latencies are recorded in microseconds up to this bound (one hour).
pub(crate) const LATENCY_MAX_MICROS: u64 = 3_600_000_000;

/// An empty latency histogram: 1 µs to `LATENCY_MAX_MICROS`, three significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, 3).expect("the bounds are valid constants")
}

/// `d` in whole microseconds, at least 1 (a histogram's lowest value), saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Records one latency (see `micros`); values past the bound count as the bound.
pub(crate) fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    histogram.saturating_record(micros(elapsed));
}

/// Latency percentiles of one measured step, in microseconds (all 0 when nothing was measured).
#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) count: u64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) max_us: u64,
    pub(crate) mean_us: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency {
                count: 0,
                p50_us: 0,
                p99_us: 0,
                max_us: 0,
                mean_us: 0.0,
            };
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

/// A name unique to this run, `bench-<milliseconds since the epoch on clock>`, for registries,
/// topics, subscriptions and streams.
pub(crate) fn run_name(clock: &dyn Clock) -> String {
    format!("bench-{}", clock.now().timestamp_millis())
}

/// A latency for a table: `850 µs`, `12.3 ms` or `12.3 s`.
pub(crate) fn fmt_micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{:.1} s", us / 1e6)
    }
}

/// A size for a table: `12.3 MiB`.
pub(crate) fn fmt_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_are_whole_microseconds_of_at_least_one() {
        assert_eq!(micros(Duration::ZERO), 1);
        assert_eq!(micros(Duration::from_nanos(2_999)), 2);
        assert_eq!(micros(Duration::MAX), u64::MAX);
        let mut h = new_histogram();
        record(&mut h, Duration::from_millis(3));
        record(&mut h, Duration::from_secs(7200));
        assert_eq!(h.len(), 2);
        assert!(h.max() >= LATENCY_MAX_MICROS);
    }

    #[test]
    fn an_empty_step_has_zero_latency() {
        let empty = Latency::of(&new_histogram());
        assert_eq!((empty.count, empty.max_us, empty.mean_us), (0, 0, 0.0));
        let mut h = new_histogram();
        record(&mut h, Duration::from_micros(500));
        let one = Latency::of(&h);
        assert_eq!(one.count, 1);
        assert!(one.p50_us.abs_diff(500) <= 1, "{}", one.p50_us);
    }

    #[test]
    fn run_names_carry_the_clock_in_milliseconds() {
        let at = chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let clock = perch_core::ManualClock::new(at);
        assert_eq!(run_name(&clock), "bench-1700000000123");
    }

    #[test]
    fn tables_show_micro_milli_or_whole_seconds() {
        assert_eq!(fmt_micros(999.0), "999 µs");
        assert_eq!(fmt_micros(1_000.0), "1.0 ms");
        assert_eq!(fmt_micros(12_345.0), "12.3 ms");
        assert_eq!(fmt_micros(10_000_000.0), "10.0 s");
        assert_eq!(fmt_mib(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
