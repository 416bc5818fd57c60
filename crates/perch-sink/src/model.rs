//! Anomaly models: one per series — (sink subscription, registry, device, subfolder, numeric
//! payload field) — an
//! exponentially weighted mean and variance of what the device reported. A reading more than
//! `THRESHOLD_SIGMAS` standard deviations from the mean, once the series has `WARM_UP` readings,
//! is an anomaly (a DS18B20's 85 °C power-on glitch among 21 °C readings, a sensor unplugged,
//! a fridge door left open).
//!
//! Pure arithmetic, no I/O: `store.rs` keeps the state in the same transaction as the rows, so a
//! redelivered message never counts twice and a restart resumes where the models were.
//!
//! Invariant: a series' mean and variance are always finite (SQLite stores NaN as NULL, and one
//! such value would make the store refuse the whole batch). A reading whose arithmetic would
//! overflow restarts its series from that reading instead (see [`Series::observe`]).

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
/// Numeric fields of one message that feed models (the first ones in name order); further fields
/// are still stored with the message but not modelled, so one message with thousands of fields
/// cannot make thousands of series. Default 64.
pub const MODEL_FIELDS_PER_MESSAGE_MAX: usize = 64;

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

/// What observing one reading did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Verdict {
    /// Set when the reading is an anomaly.
    pub outlier: Option<Outlier>,
    /// The series started over from this reading, because its state was not finite (a store
    /// written before this invariant) or folding the reading in would have overflowed.
    pub restarted: bool,
}

impl Series {
    /// A series whose only reading is `x`.
    fn starting_at(x: f64) -> Series {
        Series {
            count: 1,
            mean: x,
            var: 0.0,
        }
    }

    fn is_finite(&self) -> bool {
        self.mean.is_finite() && self.var.is_finite() && self.var >= 0.0
    }

    /// Judges `x` against the series so far, then folds it in (an anomaly too, so that a real
    /// change of level is learnt within a few dozen readings rather than flagged forever).
    /// A non-finite `x` is ignored. Where the arithmetic would leave the finite range (readings
    /// near ±1e308), the series restarts from `x`; the reading is still judged, its `z`
    /// saturating at ±`f64::MAX`.
    pub fn observe(&mut self, x: f64) -> Verdict {
        if !x.is_finite() {
            return Verdict::default();
        }
        if !self.is_finite() {
            *self = Series::starting_at(x);
            return Verdict {
                outlier: None,
                restarted: true,
            };
        }
        let outlier = (self.count >= WARM_UP)
            .then(|| {
                let std = self.var.sqrt().max(MIN_STD);
                Outlier {
                    mean: self.mean,
                    std,
                    z: ((x - self.mean) / std).clamp(-f64::MAX, f64::MAX),
                }
            })
            .filter(|o| o.z.abs() > THRESHOLD_SIGMAS);
        let mut next = *self;
        next.fold_in(x);
        let restarted = !next.is_finite();
        *self = if restarted {
            Series::starting_at(x)
        } else {
            next
        };
        Verdict { outlier, restarted }
    }

    /// Adds `x` to the mean and variance (the result may overflow; the caller checks).
    fn fold_in(&mut self, x: f64) {
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
    }
}

/// The numeric top-level fields of a JSON object payload, in name order.
pub fn numeric_fields(payload: &[u8]) -> Vec<(String, f64)> {
    let mut fields: Vec<(String, f64)> = match serde_json::from_slice::<serde_json::Value>(payload)
    {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| v.as_f64().map(|x| (k, x)))
            .collect(),
        _ => Vec::new(),
    };
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}

/// The fields the models follow: the first [`MODEL_FIELDS_PER_MESSAGE_MAX`] numeric fields of a
/// payload in name order, and how many more there were (stored, not modelled).
pub fn modelled_fields(payload: &[u8]) -> (Vec<(String, f64)>, usize) {
    let mut fields = numeric_fields(payload);
    let skipped = fields.len().saturating_sub(MODEL_FIELDS_PER_MESSAGE_MAX);
    fields.truncate(MODEL_FIELDS_PER_MESSAGE_MAX);
    (fields, skipped)
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
            assert_eq!(s.observe(x).outlier, None, "{x} after {s:?}");
        }
        let o = s
            .observe(85.0)
            .outlier
            .expect("the DS18B20 power-on value among 21 °C readings");
        assert!(
            o.z > THRESHOLD_SIGMAS && (o.mean - 21.0).abs() < 0.1,
            "{o:?}"
        );
        let o = s.observe(-127.0).outlier.expect("a disconnected sensor");
        assert!(o.z < -THRESHOLD_SIGMAS, "{o:?}");
    }

    #[test]
    fn nothing_is_flagged_while_warming_up() {
        let mut s = Series::default();
        for (i, x) in steady(WARM_UP as usize - 1).chain([500.0]).enumerate() {
            assert_eq!(s.observe(x).outlier, None, "reading {i}");
        }
    }

    #[test]
    fn a_new_level_is_flagged_then_learnt() {
        let mut s = Series::default();
        steady(100).for_each(|x| {
            s.observe(x);
        });
        let flagged: Vec<bool> = steady(100)
            .map(|x| s.observe(x + 10.0).outlier.is_some())
            .collect();
        assert!(flagged[0], "the jump itself");
        assert!(
            !flagged[60..].iter().any(|f| *f),
            "still flagging the new level: {flagged:?}"
        );
    }

    fn assert_finite(s: &Series) {
        assert!(
            s.mean.is_finite() && s.var.is_finite() && s.var >= 0.0,
            "{s:?}"
        );
    }

    #[test]
    fn huge_readings_restart_the_series_instead_of_overflowing_it() {
        let mut s = Series::default();
        let verdicts: Vec<Verdict> = [21.0, 1e308, -1e308, 21.0]
            .into_iter()
            .map(|x| {
                let v = s.observe(x);
                assert_finite(&s);
                v
            })
            .collect();
        assert!(!verdicts[0].restarted);
        assert!(verdicts[1..].iter().all(|v| v.restarted), "{verdicts:?}");
        assert_eq!(
            s,
            Series::starting_at(21.0),
            "the device's normal readings start over"
        );
        for x in steady(100) {
            assert_eq!(s.observe(x).outlier, None, "{x} after {s:?}");
        }
        assert_finite(&s);
    }

    #[test]
    fn a_huge_reading_on_a_warm_series_is_flagged_with_a_finite_z() {
        for x in [f64::MAX, -f64::MAX] {
            let mut s = Series::default();
            steady(100).for_each(|x| {
                s.observe(x);
            });
            let before = s;
            let v = s.observe(x);
            let o = v.outlier.unwrap_or_else(|| panic!("{x} after {before:?}"));
            assert!(o.z.is_finite() && o.z.signum() == x.signum(), "{o:?}");
            assert!(v.restarted);
            assert_finite(&s);
        }
    }

    #[test]
    fn a_non_finite_state_from_an_older_store_restarts_and_non_finite_input_is_ignored() {
        let mut s = Series {
            count: 30,
            mean: 21.0,
            var: f64::INFINITY,
        };
        let v = s.observe(21.5);
        assert!(v.restarted && v.outlier.is_none());
        assert_eq!(s, Series::starting_at(21.5));
        assert_eq!(s.observe(f64::NAN), Verdict::default());
        assert_eq!(s, Series::starting_at(21.5));
    }

    #[test]
    fn only_the_first_fields_of_a_message_in_name_order_are_modelled() {
        let body: serde_json::Map<String, serde_json::Value> = (0..MODEL_FIELDS_PER_MESSAGE_MAX
            + 5)
            .map(|i| (format!("f{i:05}"), serde_json::json!(i)))
            .chain([("name".to_owned(), serde_json::json!("x"))])
            .collect();
        let payload = serde_json::to_vec(&body).unwrap();
        let (fields, skipped) = modelled_fields(&payload);
        assert_eq!((fields.len(), skipped), (MODEL_FIELDS_PER_MESSAGE_MAX, 5));
        assert_eq!(fields[0], ("f00000".to_owned(), 0.0));
        let exact = serde_json::to_vec(&serde_json::json!({"b": 2, "a": 1})).unwrap();
        assert_eq!(
            modelled_fields(&exact),
            (vec![("a".into(), 1.0), ("b".into(), 2.0)], 0)
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
