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

/// Keys the agent understands. `BOOTSTRAP_KEY`, `BOOTSTRAP_ID` and `SERIAL` are for first-boot
/// provisioning (docs/agent.md "First boot: provisioning").
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
    /// `DEVICE_ID`; optional with a bootstrap credential (see [`crate::identity`]).
    pub(crate) device: Option<String>,
    pub(crate) algorithm: Algorithm,
    pub(crate) private_key: PathBuf,
    pub(crate) ca: PathBuf,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) subfolder: String,
    pub(crate) w1_devices_dir: PathBuf,
    pub(crate) queue_dir: PathBuf,
    pub(crate) queue_max_readings: usize,
    /// `BOOTSTRAP_KEY` + `BOOTSTRAP_ID`: provision at boot when `private_key` does not exist.
    pub(crate) bootstrap: Option<BootstrapConfig>,
    /// `SERIAL`: the serial number claimed when provisioning.
    pub(crate) serial: Option<String>,
}

/// The bootstrap credential the device provisions itself with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BootstrapConfig {
    /// The bootstrap private key file.
    pub(crate) key: PathBuf,
    /// The bootstrap id `B` of `projects/P/locations/L/registries/R/bootstraps/B`.
    pub(crate) id: String,
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
    let mut f = Fields {
        file,
        base,
        values: HashMap::new(),
        errors: Vec::new(),
    };
    f.read(text);
    let project = f.required("PROJECT_ID");
    let region = f.required("REGION");
    let registry = f.required("REGISTRY_ID");
    let bootstrap = f.bootstrap();
    // With a bootstrap credential the device id may come from provisioning (or the id file it
    // left); without one the device must be named, as before.
    let device = if f.take("BOOTSTRAP_KEY").is_some() || f.take("BOOTSTRAP_ID").is_some() {
        f.take("DEVICE_ID")
    } else {
        Some(f.required("DEVICE_ID"))
    };
    let host = f.required("MQTT_HOST");
    let ca = base.join(f.required("GOOGLE_ROOT_CERT"));
    let private_key = f.private_key();
    let algorithm = match f.take("ALGORITHM") {
        None => Algorithm::Es256,
        Some(a) => a.parse().unwrap_or_else(|e| {
            f.error(format!("ALGORITHM {e}"));
            Algorithm::Es256
        }),
    };
    let port = f.number(
        "MQTT_PORT",
        DEFAULT_MQTT_PORT,
        |p| *p > 0,
        |p| format!("MQTT_PORT `{p}` is not a port number (1-65535)"),
    );
    let subfolder = f
        .take("SUBFOLDER")
        .unwrap_or_else(|| DEFAULT_SUBFOLDER.into());
    if subfolder.contains(['+', '#']) || subfolder.starts_with('/') || subfolder.len() > 256 {
        f.error(format!(
            "SUBFOLDER `{subfolder}` is not a valid subfolder (no `+`, `#`, leading `/`; at most 256 bytes)"
        ));
    }
    let queue_max_readings = f.number(
        "QUEUE_MAX_READINGS",
        DEFAULT_QUEUE_MAX_READINGS,
        |n| (1..=QUEUE_MAX_READINGS_CAP).contains(n),
        |n| {
            format!(
                "QUEUE_MAX_READINGS `{n}` must be a whole number from 1 to {QUEUE_MAX_READINGS_CAP}"
            )
        },
    );
    let bootstrap_id = bootstrap.as_ref().map(|b| b.id.as_str());
    for (key, value) in [
        ("DEVICE_ID", device.as_deref()),
        ("REGISTRY_ID", Some(registry.as_str())),
        ("BOOTSTRAP_ID", bootstrap_id),
    ] {
        if let Some(value) = value.filter(|v| v.contains('/')) {
            f.error(format!("{key} `{value}` must not contain `/`"));
        }
    }
    let serial = f.take("SERIAL");
    if let Some(serial) = serial
        .as_deref()
        .filter(|s| s.chars().any(char::is_control))
    {
        f.error(format!(
            "SERIAL `{}` must not contain control characters",
            serial.escape_debug()
        ));
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
        w1_devices_dir: f
            .take("W1_DEVICES_DIR")
            .map_or_else(|| DEFAULT_W1_DEVICES_DIR.into(), |p| base.join(p)),
        queue_dir: base.join(
            f.take("QUEUE_DIR")
                .unwrap_or_else(|| DEFAULT_QUEUE_DIR.into()),
        ),
        queue_max_readings,
        bootstrap,
        serial,
    };
    if f.errors.is_empty() {
        Ok(config)
    } else {
        Err(f.errors)
    }
}

/// The `KEY = VALUE` pairs of one config file and the errors found so far, each prefixed with
/// the file's name.
struct Fields<'a> {
    file: &'a str,
    base: &'a Path,
    values: HashMap<String, String>,
    errors: Vec<String>,
}

impl Fields<'_> {
    /// Reads every line: blank lines and `#` comments are skipped; unknown and repeated keys
    /// and lines without `=` are errors.
    fn read(&mut self, text: &str) {
        let file = self.file;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                self.errors.push(format!(
                    "{file}: line {}: expected `KEY = VALUE`",
                    number + 1
                ));
                continue;
            };
            let key = key.trim().to_ascii_uppercase();
            if !KNOWN_KEYS.contains(&key.as_str()) {
                self.errors.push(format!(
                    "{file}: unknown key {key} (line {}); known keys: {}",
                    number + 1,
                    KNOWN_KEYS.join(", ")
                ));
                continue;
            }
            if self
                .values
                .insert(key.clone(), clean_value(value))
                .is_some()
            {
                self.errors
                    .push(format!("{file}: {key} is set twice (line {})", number + 1));
            }
        }
    }

    fn error(&mut self, message: String) {
        self.errors.push(format!("{}: {message}", self.file));
    }

    /// The value of `key`, unless unset or empty.
    fn take(&self, key: &str) -> Option<String> {
        self.values.get(key).filter(|v| !v.is_empty()).cloned()
    }

    /// The value of `key`; an error (and "") when it is missing.
    fn required(&mut self, key: &str) -> String {
        let value = self.take(key);
        if value.is_none() {
            self.error(format!("{key} is missing"));
        }
        value.unwrap_or_default()
    }

    /// A number: `default` when unset; an error (and 0) when it does not parse or `valid`
    /// refuses it.
    fn number<T: std::str::FromStr + Default>(
        &mut self,
        key: &str,
        default: T,
        valid: impl Fn(&T) -> bool,
        describe: impl Fn(&str) -> String,
    ) -> T {
        let Some(text) = self.take(key) else {
            return default;
        };
        match text.parse::<T>() {
            Ok(n) if valid(&n) => n,
            _ => {
                self.error(describe(&text));
                T::default()
            }
        }
    }

    /// BOOTSTRAP_KEY and BOOTSTRAP_ID: both or neither.
    fn bootstrap(&mut self) -> Option<BootstrapConfig> {
        match (self.take("BOOTSTRAP_KEY"), self.take("BOOTSTRAP_ID")) {
            (Some(key), Some(id)) => Some(BootstrapConfig {
                key: self.base.join(key),
                id,
            }),
            (None, None) => None,
            (Some(_), None) => {
                self.error("BOOTSTRAP_ID is missing (BOOTSTRAP_KEY is set)".into());
                None
            }
            (None, Some(_)) => {
                self.error("BOOTSTRAP_KEY is missing (BOOTSTRAP_ID is set)".into());
                None
            }
        }
    }

    /// PRIVATE_KEY, joined to KEY_PATH when both are set (the IoT Core samples' pair).
    fn private_key(&mut self) -> PathBuf {
        match (self.take("KEY_PATH"), self.take("PRIVATE_KEY")) {
            (Some(dir), Some(file)) => self.base.join(dir).join(file),
            (Some(one), None) | (None, Some(one)) => self.base.join(one),
            (None, None) => {
                self.error("PRIVATE_KEY (or KEY_PATH) is missing".into());
                PathBuf::new()
            }
        }
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
        assert_eq!(c.device.as_deref(), Some("raspberry-pi-1"));
        assert_eq!(c.bootstrap, None);
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
    fn a_bootstrap_credential_makes_device_id_optional() {
        let text = GOOD.replace(
            "DEVICE_ID = raspberry-pi-1\n",
            "BOOTSTRAP_KEY = lot-7/bootstrap_private.pem\nBOOTSTRAP_ID = lot-7\nSERIAL = 00000000a1b2c3d4\n",
        );
        let c = parse(&text, "f.txt", Path::new("/etc/pi")).unwrap();
        assert_eq!(c.device, None);
        assert_eq!(
            c.bootstrap,
            Some(BootstrapConfig {
                key: "/etc/pi/lot-7/bootstrap_private.pem".into(),
                id: "lot-7".into()
            })
        );
        assert_eq!(c.serial.as_deref(), Some("00000000a1b2c3d4"));
        // DEVICE_ID may still be given: it is the id asked for.
        let named = parse(
            &format!("{text}DEVICE_ID = pi-kitchen\n"),
            "f.txt",
            Path::new("/etc/pi"),
        )
        .unwrap();
        assert_eq!(named.device.as_deref(), Some("pi-kitchen"));
    }

    #[test]
    fn bootstrap_keys_come_in_pairs_and_ids_have_no_slash() {
        let no_device = GOOD.replace("DEVICE_ID = raspberry-pi-1\n", "");
        assert_eq!(
            errors(&format!("{no_device}BOOTSTRAP_KEY = b.pem\n")),
            ["f.txt: BOOTSTRAP_ID is missing (BOOTSTRAP_KEY is set)"]
        );
        assert_eq!(
            errors(&format!("{no_device}BOOTSTRAP_ID = lot-7\n")),
            ["f.txt: BOOTSTRAP_KEY is missing (BOOTSTRAP_ID is set)"]
        );
        assert_eq!(
            errors(&format!(
                "{no_device}BOOTSTRAP_KEY = b.pem\nBOOTSTRAP_ID = lots/7\n"
            )),
            ["f.txt: BOOTSTRAP_ID `lots/7` must not contain `/`"]
        );
        // Without a bootstrap credential DEVICE_ID stays required, SERIAL or not.
        assert_eq!(
            errors(&format!("{no_device}SERIAL = 1234\n")),
            ["f.txt: DEVICE_ID is missing"]
        );
    }

    #[test]
    fn an_empty_value_counts_as_missing() {
        let errs = errors(&GOOD.replace("MQTT_HOST = your-perch-host", "MQTT_HOST ="));
        assert_eq!(errs, ["f.txt: MQTT_HOST is missing"]);
    }
}
