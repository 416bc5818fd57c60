//! DS18B20 temperature sensors through the Linux w1-gpio driver, and a simulator.
//!
//! Each sensor is a `28-*` directory under the W1 devices dir with a `w1_slave` file:
//! ```text
//! 72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
//! 72 01 4b 46 7f ff 0e 10 57 t=23125
//! ```
//! A reading counts only when the first line ends in `YES` (the driver's CRC check); `t=` is in
//! milli-degrees Celsius. 85000 (the power-on value: no conversion ran) and -127000 (the
//! driver's "no answer") are errors, never temperatures. Reading a file takes the driver about
//! 750 ms per sensor, so callers run [`read_all`] on a blocking thread.

use std::path::Path;

/// The family code of DS18B20 (and DS1822/MAX31820) 1-Wire thermometers.
const DS18B20_FAMILY_PREFIX: &str = "28-";
/// Power-on reset value of the scratchpad: the conversion did not run.
const POWER_ON_RESET_MILLI: i64 = 85_000;
/// What w1_therm reports when the sensor did not answer.
const NO_ANSWER_MILLI: i64 = -127_000;

/// One sensor's outcome in a reading cycle.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SensorReading {
    pub(crate) sensor_id: String,
    pub(crate) result: Result<f64, String>,
}

/// Reads every `28-*/w1_slave` under `dir`, sorted by sensor id. An unreadable directory is
/// an error for the whole cycle.
pub(crate) fn read_all(dir: &Path) -> Result<Vec<SensorReading>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(DS18B20_FAMILY_PREFIX))
        .filter(|name| dir.join(name).join("w1_slave").is_file())
        .collect();
    ids.sort();
    Ok(ids
        .into_iter()
        .map(|sensor_id| {
            let result = std::fs::read_to_string(dir.join(&sensor_id).join("w1_slave"))
                .map_err(|e| format!("cannot read w1_slave: {e}"))
                .and_then(|text| parse_w1_slave(&text))
                .map(|milli| milli as f64 / 1000.0);
            SensorReading { sensor_id, result }
        })
        .collect())
}

/// Milli-degrees Celsius from the text of a `w1_slave` file.
pub(crate) fn parse_w1_slave(text: &str) -> Result<i64, String> {
    let mut lines = text.lines();
    let crc_line = lines.next().unwrap_or("").trim_end();
    if !crc_line.ends_with("YES") {
        return Err(format!(
            "CRC check failed (`{}`)",
            crc_line.chars().take(60).collect::<String>()
        ));
    }
    let data_line = lines.next().unwrap_or("");
    let Some((_, value)) = data_line.rsplit_once("t=") else {
        return Err("no `t=` value on the second line".into());
    };
    let milli: i64 = value
        .trim()
        .parse()
        .map_err(|_| format!("`t={}` is not a number", value.trim()))?;
    match milli {
        POWER_ON_RESET_MILLI => {
            Err("85000 is the power-on value: no conversion ran (check the power wiring)".into())
        }
        NO_ANSWER_MILLI => Err("-127000: the sensor did not answer (disconnected?)".into()),
        _ => Ok(milli),
    }
}

/// Simulated sensors whose temperatures drift slowly around their own base value.
#[derive(Debug)]
pub(crate) struct Simulator {
    sensors: Vec<(String, f64, f64)>,
}

/// Simulated sensors (the seed's Pi had two DS18B20s).
const SIMULATED_SENSORS: usize = 2;
/// Largest change between two readings, in degrees.
const SIMULATED_STEP_C: f64 = 0.1;

impl Default for Simulator {
    fn default() -> Self {
        let sensors = (0..SIMULATED_SENSORS)
            .map(|i| {
                let base = 20.0 + 1.5 * i as f64;
                (format!("simulated-{}", i + 1), base, base)
            })
            .collect();
        Simulator { sensors }
    }
}

impl Simulator {
    /// The next reading of every simulated sensor: a random step, pulled back towards the base.
    pub(crate) fn read_all(&mut self) -> Vec<SensorReading> {
        self.sensors
            .iter_mut()
            .map(|(id, base, now)| {
                let step = (rand::random::<f64>() * 2.0 - 1.0) * SIMULATED_STEP_C;
                *now += step + (*base - *now) * 0.05;
                SensorReading {
                    sensor_id: id.clone(),
                    result: Ok((*now * 1000.0).round() / 1000.0),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w1_slave_files_are_judged_by_crc_and_value() {
        let check = |text: &str| {
            parse_w1_slave(text).map_err(|e| e.split(' ').next().unwrap_or("").to_owned())
        };
        let file = |crc: &str, t: &str| {
            format!("72 01 4b 46 7f ff 0e 10 57 : crc=57 {crc}\n72 01 4b 46 7f ff 0e 10 57 t={t}\n")
        };
        assert_eq!(check(&file("YES", "23125")), Ok(23125));
        assert_eq!(check(&file("YES", "-1250")), Ok(-1250));
        assert_eq!(check(&file("NO", "23125")), Err("CRC".into()));
        assert_eq!(check(&file("YES", "85000")), Err("85000".into()));
        assert_eq!(check(&file("YES", "-127000")), Err("-127000:".into()));
        assert_eq!(check(&file("YES", "x")), Err("`t=x`".into()));
        assert_eq!(check("72 01 : crc=57 YES\n"), Err("no".into()));
        assert_eq!(check(""), Err("CRC".into()));
    }

    #[test]
    fn only_28_family_directories_with_w1_slave_count() {
        let dir = tempfile::tempdir().unwrap();
        let sensor = |name: &str, body: &str| {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("w1_slave"), body).unwrap();
        };
        sensor("28-000000000002", "x : crc=1 YES\nx t=21500\n");
        sensor("28-000000000001", "x : crc=1 NO\nx t=21500\n");
        sensor("10-000000000003", "x : crc=1 YES\nx t=1\n");
        std::fs::create_dir_all(dir.path().join("w1_bus_master1")).unwrap();
        let readings = read_all(dir.path()).unwrap();
        assert_eq!(readings.len(), 2);
        assert_eq!(readings[0].sensor_id, "28-000000000001");
        assert!(readings[0].result.is_err());
        assert_eq!(readings[1].result, Ok(21.5));
        assert!(read_all(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn simulated_temperatures_drift_slowly() {
        let mut sim = Simulator::default();
        let first = sim.read_all();
        for _ in 0..100 {
            let next = sim.read_all();
            for (a, b) in first.iter().zip(&next) {
                assert_eq!(a.sensor_id, b.sensor_id);
            }
        }
        let last = sim.read_all();
        for r in last {
            let t = r.result.unwrap();
            assert!((15.0..30.0).contains(&t), "{t}");
        }
    }
}
