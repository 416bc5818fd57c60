//! The device config file, in the seed's `gcp_iot_config.txt` format: `KEY = VALUE` lines,
//! `#` comments (whole-line, or after whitespace at the end of a line), optional quotes.
//!
//! Parsed and validated once at startup; every problem is reported, one line each, naming the
//! key and the file (STYLE.md P9). Relative paths are resolved against the file's directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use perch_device::Algorithm;

/// Default IoT Core MQTT port (SPEC.md §4.1).
const DEFAULT_MQTT_PORT: u16 = 8883;
/// The seed's telemetry subfolder.
const DEFAULT_SUBFOLDER: &str = "temperature";
/// Where the Linux w1-gpio driver lists 1-Wire devices.
const DEFAULT_W1_DEVICES_DIR: &str = "/sys/bus/w1/devices";
/// Queue directory, relative to the config file, when QUEUE_DIR is absent.
const DEFAULT_QUEUE_DIR: &str = "perch-agent-queue";
/// Readings kept while offline: a week at one reading per minute from two sensors.
pub(crate) const DEFAULT_QUEUE_MAX_READINGS: usize = 20_000;
/// Hard cap on QUEUE_MAX_READINGS (one small file per reading).
const QUEUE_MAX_READINGS_CAP: usize = 1_000_000;

/// Keys the agent understands. `BOOTSTRAP_*` and `SERIAL` belong to fleet provisioning, which
/// this agent does not do yet; they are accepted and ignored.
const KNOWN_KEYS: &[&str] = &[
    "KEY_PATH",
    "PRIVATE_KEY",
    "GOOGLE_ROOT_CERT",
    "REGION",
    "PROJECT_ID",
    "REGISTRY_ID",
    "DEVICE_ID",
    "ALGORITHM",
    "MQTT_HOST",
    "MQTT_PORT",
    "SUBFOLDER",
    "W1_DEVICES_DIR",
    "QUEUE_DIR",
    "QUEUE_MAX_READINGS",
    "BOOTSTRAP_KEY",
    "BOOTSTRAP_ID",
    "SERIAL",
];

/// A validated config file.
#[derive(Debug, Clone)]
pub(crate) struct AgentConfig {
    pub(crate) project: String,
    pub(crate) region: String,
    pub(crate) registry: String,
    pub(crate) device: String,
    pub(crate) algorithm: Algorithm,
    pub(crate) private_key: PathBuf,
    pub(crate) ca: PathBuf,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) subfolder: String,
    pub(crate) w1_devices_dir: PathBuf,
    pub(crate) queue_dir: PathBuf,
    pub(crate) queue_max_readings: usize,
}

/// Reads and validates `path`. `Err` holds every problem, one line each.
pub(crate) fn load(path: &Path) -> Result<AgentConfig, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![format!(
            "{}: cannot read the config file: {e}",
            path.display()
        )]
    })?;
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    parse(&text, &path.display().to_string(), &base)
}

/// Parses `text` (the file named `file`), resolving relative paths against `base`.
pub(crate) fn parse(text: &str, file: &str, base: &Path) -> Result<AgentConfig, Vec<String>> {
    let mut errors = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            errors.push(format!(
                "{file}: line {}: expected `KEY = VALUE`",
                number + 1
            ));
            continue;
        };
        let key = key.trim().to_ascii_uppercase();
        if !KNOWN_KEYS.contains(&key.as_str()) {
            errors.push(format!(
                "{file}: unknown key {key} (line {}); known keys: {}",
                number + 1,
                KNOWN_KEYS.join(", ")
            ));
            continue;
        }
        if values.insert(key.clone(), clean_value(value)).is_some() {
            errors.push(format!("{file}: {key} is set twice (line {})", number + 1));
        }
    }

    let take = |key: &str| values.get(key).filter(|v| !v.is_empty()).cloned();
    let required = |key: &str, errors: &mut Vec<String>| {
        let value = take(key);
        if value.is_none() {
            errors.push(format!("{file}: {key} is missing"));
        }
        value.unwrap_or_default()
    };
    let project = required("PROJECT_ID", &mut errors);
    let region = required("REGION", &mut errors);
    let registry = required("REGISTRY_ID", &mut errors);
    let device = required("DEVICE_ID", &mut errors);
    let host = required("MQTT_HOST", &mut errors);
    let ca = base.join(required("GOOGLE_ROOT_CERT", &mut errors));
    let resolve = |p: String| base.join(p);

    let private_key = match (take("KEY_PATH"), take("PRIVATE_KEY")) {
        (Some(dir), Some(file)) => resolve(dir).join(file),
        (Some(one), None) | (None, Some(one)) => resolve(one),
        (None, None) => {
            errors.push(format!("{file}: PRIVATE_KEY (or KEY_PATH) is missing"));
            PathBuf::new()
        }
    };
    let algorithm = match take("ALGORITHM") {
        None => Algorithm::Es256,
        Some(a) => a.parse().unwrap_or_else(|e| {
            errors.push(format!("{file}: ALGORITHM {e}"));
            Algorithm::Es256
        }),
    };
    let port = match take("MQTT_PORT") {
        None => DEFAULT_MQTT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                errors.push(format!(
                    "{file}: MQTT_PORT `{p}` is not a port number (1-65535)"
                ));
                0
            }
        },
    };
    let subfolder = take("SUBFOLDER").unwrap_or_else(|| DEFAULT_SUBFOLDER.into());
    if subfolder.contains(['+', '#']) || subfolder.starts_with('/') || subfolder.len() > 256 {
        errors.push(format!(
            "{file}: SUBFOLDER `{subfolder}` is not a valid subfolder (no `+`, `#`, leading `/`; at most 256 bytes)"
        ));
    }
    let queue_max_readings = match take("QUEUE_MAX_READINGS") {
        None => DEFAULT_QUEUE_MAX_READINGS,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if (1..=QUEUE_MAX_READINGS_CAP).contains(&n) => n,
            _ => {
                errors.push(format!(
                    "{file}: QUEUE_MAX_READINGS `{n}` must be a whole number from 1 to {QUEUE_MAX_READINGS_CAP}"
                ));
                0
            }
        },
    };
    for (key, value) in [("DEVICE_ID", &device), ("REGISTRY_ID", &registry)] {
        if value.contains('/') {
            errors.push(format!("{file}: {key} `{value}` must not contain `/`"));
        }
    }
    let config = AgentConfig {
        project,
        region,
        registry,
        device,
        algorithm,
        private_key,
        ca,
        host,
        port,
        subfolder,
        w1_devices_dir: take("W1_DEVICES_DIR")
            .map_or_else(|| DEFAULT_W1_DEVICES_DIR.into(), resolve),
        queue_dir: resolve(take("QUEUE_DIR").unwrap_or_else(|| DEFAULT_QUEUE_DIR.into())),
        queue_max_readings,
    };
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// Drops a trailing ` # comment` and surrounding quotes.
fn clean_value(raw: &str) -> String {
    let mut value = raw.trim();
    if let Some(at) = value
        .char_indices()
        .find(|&(i, c)| c == '#' && i > 0 && value[..i].ends_with(char::is_whitespace))
        .map(|(i, _)| i)
    {
        value = value[..at].trim_end();
    }
    for quote in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(quote) && value.ends_with(quote) {
            value = &value[1..value.len() - 1];
        }
    }
    value.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# the seed's file
PROJECT_ID = perch
REGION = us-central1
REGISTRY_ID = RaspberryPiDevices
DEVICE_ID = raspberry-pi-1
PRIVATE_KEY = pi-1-keys/ec_private.pem
ALGORITHM = ES256
GOOGLE_ROOT_CERT = perch-data/tls/ca.pem     # the CA Perch generated
MQTT_HOST = your-perch-host
MQTT_PORT = 8883
";

    fn errors(text: &str) -> Vec<String> {
        parse(text, "f.txt", Path::new("/etc/pi")).unwrap_err()
    }

    #[test]
    fn the_readme_file_parses_with_defaults() {
        let c = parse(GOOD, "f.txt", Path::new("/etc/pi")).unwrap();
        assert_eq!(c.device, "raspberry-pi-1");
        assert_eq!(c.ca, Path::new("/etc/pi/perch-data/tls/ca.pem"));
        assert_eq!(c.private_key, Path::new("/etc/pi/pi-1-keys/ec_private.pem"));
        assert_eq!(c.port, 8883);
        assert_eq!(c.algorithm, Algorithm::Es256);
        assert_eq!(c.subfolder, "temperature");
        assert_eq!(c.w1_devices_dir, Path::new("/sys/bus/w1/devices"));
        assert_eq!(c.queue_dir, Path::new("/etc/pi/perch-agent-queue"));
    }

    #[test]
    fn key_path_joins_private_key_and_quotes_are_dropped() {
        let text = GOOD.replace(
            "PRIVATE_KEY = pi-1-keys/ec_private.pem",
            "KEY_PATH = '/keys'\nPRIVATE_KEY = \"a#b.pem\"",
        );
        let c = parse(&text, "f.txt", Path::new("/etc/pi")).unwrap();
        assert_eq!(c.private_key, Path::new("/keys/a#b.pem"));
    }

    #[test]
    fn every_problem_is_reported_with_its_key_and_the_file() {
        let text = GOOD
            .replace("DEVICE_ID = raspberry-pi-1\n", "")
            .replace("MQTT_PORT = 8883", "MQTT_PORT = eighty")
            .replace("ALGORITHM = ES256", "ALGORITHM = HS256")
            + "DEVICEID = x\nnot a line\n";
        let errs = errors(&text);
        let has = |want: &str| {
            errs.iter()
                .any(|e| e.starts_with("f.txt: ") && e.contains(want))
        };
        assert!(has("DEVICE_ID is missing"), "{errs:?}");
        assert!(has("MQTT_PORT `eighty`"), "{errs:?}");
        assert!(has("ALGORITHM `HS256`"), "{errs:?}");
        assert!(has("unknown key DEVICEID"), "{errs:?}");
        assert!(has("line 11: expected `KEY = VALUE`"), "{errs:?}");
        assert_eq!(errs.len(), 5, "{errs:?}");
    }

    #[test]
    fn an_empty_value_counts_as_missing() {
        let errs = errors(&GOOD.replace("MQTT_HOST = your-perch-host", "MQTT_HOST ="));
        assert_eq!(errs, ["f.txt: MQTT_HOST is missing"]);
    }
}
