//! Anomaly models: one per series — (sink subscription, registry, device, subfolder, numeric
//! payload field) — an
//! exponentially weighted mean and variance of what the device reported. A reading more than
//! `THRESHOLD_SIGMAS` standard deviations from the mean, once the series has `WARM_UP` readings,
//! is an anomaly (a DS18B20's 85 °C power-on glitch among 21 °C readings, a sensor unplugged,
//! a fridge door left open).
//!
//! Pure arithmetic, no I/O: `store.rs` keeps the state in the same transaction as the rows, so a
//! redelivered message never counts twice and a restart resumes where the models were.

use serde::{Deserialize, Serialize};

/// Readings a series needs before it may flag anything.
pub const WARM_UP: u64 = 20;
/// Weight of a new reading once warm (about the last 20 readings matter).
pub const ALPHA: f64 = 0.1;
/// How far from the mean, in standard deviations, an anomaly lies.
pub const THRESHOLD_SIGMAS: f64 = 4.0;
/// Least standard deviation assumed: a sensor that reads the same value for a while (a DS18B20
/// steps by 0.0625 °C) must not make the next small step an anomaly.
pub const MIN_STD: f64 = 0.1;

/// The state of one series.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Series {
    pub count: u64,
    pub mean: f64,
    /// Variance (population, during warm-up; exponentially weighted after).
    pub var: f64,
}

/// Why a reading was flagged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outlier {
    pub mean: f64,
    pub std: f64,
    /// (value - mean) / std, signed.
    pub z: f64,
}

impl Series {
    /// Judges `x` against the series so far, then folds it in (an anomaly too, so that a real
    /// change of level is learnt within a few dozen readings rather than flagged forever).
    pub fn observe(&mut self, x: f64) -> Option<Outlier> {
        if !x.is_finite() {
            return None;
        }
        let outlier = (self.count >= WARM_UP).then(|| {
            let std = self.var.max(0.0).sqrt().max(MIN_STD);
            Outlier {
                mean: self.mean,
                std,
                z: (x - self.mean) / std,
            }
        });
        self.count += 1;
        let diff = x - self.mean;
        if self.count <= WARM_UP {
            // Welford: exact mean and variance of the first readings.
            self.mean += diff / self.count as f64;
            self.var += (diff * (x - self.mean) - self.var) / self.count as f64;
        } else {
            let step = ALPHA * diff;
            self.mean += step;
            self.var = (1.0 - ALPHA) * (self.var + diff * step);
        }
        outlier.filter(|o| o.z.abs() > THRESHOLD_SIGMAS)
    }
}

/// The numeric top-level fields of a JSON object payload, which are what the models follow.
pub fn numeric_fields(payload: &[u8]) -> Vec<(String, f64)> {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| v.as_f64().map(|x| (k, x)))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 21 °C with ±0.1 of deterministic wobble.
    fn steady(n: usize) -> impl Iterator<Item = f64> {
        (0..n).map(|i| 21.0 + [0.0, 0.06, -0.06, 0.12, -0.1][i % 5])
    }

    #[test]
    fn steady_readings_are_never_flagged_and_a_glitch_is() {
        let mut s = Series::default();
        for x in steady(200) {
            assert_eq!(s.observe(x), None, "{x} after {s:?}");
        }
        let o = s
            .observe(85.0)
            .expect("the DS18B20 power-on value among 21 °C readings");
        assert!(
            o.z > THRESHOLD_SIGMAS && (o.mean - 21.0).abs() < 0.1,
            "{o:?}"
        );
        let o = s.observe(-127.0).expect("a disconnected sensor");
        assert!(o.z < -THRESHOLD_SIGMAS, "{o:?}");
    }

    #[test]
    fn nothing_is_flagged_while_warming_up() {
        let mut s = Series::default();
        for (i, x) in steady(WARM_UP as usize - 1).chain([500.0]).enumerate() {
            assert_eq!(s.observe(x), None, "reading {i}");
        }
    }

    #[test]
    fn a_new_level_is_flagged_then_learnt() {
        let mut s = Series::default();
        steady(100).for_each(|x| {
            s.observe(x);
        });
        let flagged: Vec<bool> = steady(100).map(|x| s.observe(x + 10.0).is_some()).collect();
        assert!(flagged[0], "the jump itself");
        assert!(
            !flagged[60..].iter().any(|f| *f),
            "still flagging the new level: {flagged:?}"
        );
    }

    #[test]
    fn only_numeric_top_level_fields_are_followed() {
        let mut got = numeric_fields(
            br#"{"temperature_c": 21.5, "humidity": 40, "sensor_id": "28-1", "nested": {"x": 1}}"#,
        );
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [("humidity".into(), 40.0), ("temperature_c".into(), 21.5)]
        );
        assert!(numeric_fields(b"21.5").is_empty());
        assert!(numeric_fields(b"\xff").is_empty());
    }
}
