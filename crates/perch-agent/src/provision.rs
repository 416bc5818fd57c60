//! First-boot provisioning (docs/agent.md "First boot: provisioning", docs/provisioning.md):
//! with `BOOTSTRAP_KEY` + `BOOTSTRAP_ID` and no device key file yet, the agent makes a P-256
//! key, asks the bridge for a device with it (claiming its serial number and MAC), and on
//! `ALLOWED` stores the key (0600) and the granted device id next to it, then runs as that device.
//!
//! Also resolves the device identity on later boots: `DEVICE_ID`, else the id file provisioning
//! left (`<PRIVATE_KEY>.device_id`), else `pi-<serial>` (the id provisioning asks for).

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use perch_device::backoff::Backoff;
use perch_device::bootstrap::{self, BootstrapOptions};
use perch_device::tls::TlsConfig;
use perch_device::{Algorithm, SigningKey};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::AgentConfig;

/// Exit code when the server denies the request (no key is written).
pub(crate) const EXIT_DENIED: u8 = 3;
/// One attempt (connect, ask, answer) must finish within this.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime of the bootstrap JWT; the bridge keeps a bootstrap connection at most 5 minutes.
const BOOTSTRAP_JWT_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Refusals that say "not now" rather than "no": retried with backoff like network errors.
const RETRIED_REASONS: &[&str] = &["RATE_LIMITED", "INTERNAL", "PENDING_APPROVAL"];
/// Where the serial number and MAC come from when `SERIAL` is absent.
const CPUINFO: &str = "/proc/cpuinfo";
const MACHINE_ID_FILES: &[&str] = &["/etc/machine-id", "/var/lib/dbus/machine-id"];
const NET_CLASS_DIR: &str = "/sys/class/net";

/// `<PRIVATE_KEY>.device_id`: the device id provisioning was granted.
pub(crate) fn device_id_file(private_key: &Path) -> PathBuf {
    let mut name = OsString::from(private_key.as_os_str());
    name.push(".device_id");
    PathBuf::from(name)
}

/// `SERIAL`, else the `Serial` line of /proc/cpuinfo (a Raspberry Pi's), else the machine id.
pub(crate) fn serial(config: &AgentConfig) -> Result<String, String> {
    if let Some(serial) = &config.serial {
        return Ok(serial.clone());
    }
    if let Some(serial) = fs::read_to_string(CPUINFO)
        .ok()
        .and_then(|t| cpuinfo_serial(&t))
    {
        return Ok(serial);
    }
    MACHINE_ID_FILES
        .iter()
        .find_map(|f| {
            let id = fs::read_to_string(f).ok()?;
            let id = id.trim();
            (!id.is_empty()).then(|| id.to_owned())
        })
        .ok_or_else(|| {
            format!(
                "SERIAL is missing and neither {CPUINFO} (a `Serial` line) nor {} gives one",
                MACHINE_ID_FILES.join(" nor ")
            )
        })
}

/// The `Serial : …` value of /proc/cpuinfo, unless absent or all zeros.
fn cpuinfo_serial(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        let value = value.trim();
        (key.trim() == "Serial" && !value.is_empty() && value.chars().any(|c| c != '0'))
            .then(|| value.to_owned())
    })
}

/// The MAC address of the first network interface (by name) other than loopback.
pub(crate) fn first_mac(net_class_dir: &Path) -> Option<String> {
    let mut names: Vec<OsString> = fs::read_dir(net_class_dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let mac = fs::read_to_string(net_class_dir.join(name).join("address")).ok()?;
        let mac = mac.trim().to_ascii_lowercase();
        let is_mac = mac.len() == 17
            && mac
                .split(':')
                .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
        (is_mac && mac != "00:00:00:00:00:00").then_some(mac)
    })
}

/// `pi-<serial>`, when that is a valid IoT Core device id.
pub(crate) fn derived_device_id(serial: &str) -> Result<String, String> {
    let id = format!("pi-{serial}");
    let valid = id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._+~%".contains(&b));
    if valid {
        Ok(id)
    } else {
        Err(format!(
            "SERIAL `{}` does not make a valid device id (`pi-<serial>`: letters, digits and -._+~%); set DEVICE_ID",
            serial.escape_debug()
        ))
    }
}

/// The device id on a boot with a key file: `DEVICE_ID`, else the id file, else (with a
/// bootstrap credential) `pi-<serial>`. `Err` is one line without the config file's name.
pub(crate) fn stored_device_id(config: &AgentConfig) -> Result<String, String> {
    if let Some(device) = &config.device {
        return Ok(device.clone());
    }
    let file = device_id_file(&config.private_key);
    match fs::read_to_string(&file) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty() || id.contains('/') {
                Err(format!(
                    "DEVICE_ID is missing and {} does not hold a device id",
                    file.display()
                ))
            } else {
                Ok(id.to_owned())
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && config.bootstrap.is_some() => {
            let id = derived_device_id(&serial(config)?)?;
            tracing::warn!(device = %id, missing = %file.display(), "no stored device id; using the one provisioning asks for");
            Ok(id)
        }
        Err(e) => Err(format!(
            "DEVICE_ID is missing and {} cannot be read: {e}",
            file.display()
        )),
    }
}

/// What provisioning needs, gathered (and checked) at startup.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) bootstrap_key: SigningKey,
    pub(crate) bootstrap_id: String,
    pub(crate) serial: String,
    pub(crate) mac: Option<String>,
    pub(crate) device_id: String,
}

/// Builds the plan for a boot without a key file. `Err`: one line per problem, each starting
/// with the config key it is about.
pub(crate) fn plan(config: &AgentConfig) -> Result<Plan, Vec<String>> {
    let mut errors = Vec::new();
    let Some(bootstrap) = &config.bootstrap else {
        return Err(vec!["BOOTSTRAP_KEY is missing".into()]);
    };
    if config.algorithm != Algorithm::Es256 {
        errors.push(
            "ALGORITHM RS256 cannot be provisioned: the agent makes a P-256 (ES256) key; remove ALGORITHM"
                .to_owned(),
        );
    }
    let bootstrap_key = fs::read(&bootstrap.key)
        .map_err(|e| e.to_string())
        .and_then(|pem| {
            // A bootstrap key is P-256 or RSA; the JWT algorithm follows the key.
            SigningKey::from_pem(&pem, Algorithm::Es256)
                .or_else(|es| SigningKey::from_pem(&pem, Algorithm::Rs256).map_err(|_| es))
                .map_err(|e| e.to_string())
        })
        .map_err(|e| errors.push(format!("BOOTSTRAP_KEY {}: {e}", bootstrap.key.display())))
        .ok();
    let serial = serial(config).map_err(|e| errors.push(e)).ok();
    let device_id = match (&config.device, &serial) {
        (Some(id), _) => Some(id.clone()),
        (None, Some(serial)) => derived_device_id(serial).map_err(|e| errors.push(e)).ok(),
        (None, None) => None,
    };
    match (bootstrap_key, serial, device_id) {
        (Some(bootstrap_key), Some(serial), Some(device_id)) if errors.is_empty() => Ok(Plan {
            bootstrap_key,
            bootstrap_id: bootstrap.id.clone(),
            serial,
            mac: first_mac(Path::new(NET_CLASS_DIR)),
            device_id,
        }),
        _ => Err(errors),
    }
}

#[derive(Serialize)]
struct Request<'a> {
    serial: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<&'a str>,
    device_id: &'a str,
    public_key: RequestKey<'a>,
}

#[derive(Serialize)]
struct RequestKey<'a> {
    format: &'static str,
    key: &'a str,
}

/// The fields of the answer the agent acts on.
#[derive(Debug, Deserialize, PartialEq, Eq)]
struct Answer {
    decision: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    num_id: Option<String>,
}

/// How provisioning ended, when not with a device.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server said no: exit [`EXIT_DENIED`].
    Denied,
    /// No answer before the `--once` deadline, or the key could not be stored: exit 1.
    Failed,
}

/// Asks until answered: network errors and "not now" refusals are retried with backoff (and a
/// fresh request id, the same key) until `deadline`, if any. On `ALLOWED` stores the key and
/// the device id and returns both.
pub(crate) async fn provision(
    config: &AgentConfig,
    plan: Plan,
    tls: TlsConfig,
    deadline: Option<Instant>,
) -> Result<(SigningKey, String), Failure> {
    let generated = SigningKey::generate_es256().map_err(|e| {
        tracing::error!(error = %e, "provisioning failed");
        Failure::Failed
    })?;
    let options = BootstrapOptions {
        project: config.project.clone(),
        region: config.region.clone(),
        registry: config.registry.clone(),
        bootstrap: plan.bootstrap_id.clone(),
        host: config.host.clone(),
        port: config.port,
        tls,
        key: Arc::new(plan.bootstrap_key),
        jwt_lifetime: BOOTSTRAP_JWT_LIFETIME,
    };
    let body = serde_json::to_vec(&Request {
        serial: &plan.serial,
        mac: plan.mac.as_deref(),
        device_id: &plan.device_id,
        public_key: RequestKey {
            format: "ES256_PEM",
            key: &generated.public_pem,
        },
    })
    .unwrap_or_default();
    tracing::info!(
        bootstrap = %plan.bootstrap_id, device = %plan.device_id, serial = %plan.serial,
        mac = plan.mac.as_deref().unwrap_or(""), "provisioning"
    );
    let mut backoff = Backoff::default();
    let answer = loop {
        let request_id = bootstrap::new_request_id();
        let timeout = deadline.map_or(ANSWER_TIMEOUT, |d| {
            ANSWER_TIMEOUT.min(d.saturating_duration_since(Instant::now()))
        });
        let error = match bootstrap::ask(&options, &request_id, body.clone(), timeout).await {
            Ok(bytes) => match serde_json::from_slice::<Answer>(&bytes) {
                Ok(answer) if answer.decision == "ALLOWED" => break answer,
                Ok(answer) if answer.decision == "DENIED" => {
                    let reason = answer.reason.unwrap_or_default();
                    if !RETRIED_REASONS.contains(&reason.as_str()) {
                        tracing::error!(reason = %reason, "provisioning denied: {}", answer.message);
                        return Err(Failure::Denied);
                    }
                    format!("refused for now: {reason}: {}", answer.message)
                }
                Ok(answer) => format!("unexpected decision `{}`", answer.decision),
                Err(e) => format!("unreadable answer ({e})"),
            },
            Err(e) => e.to_string(),
        };
        let delay = backoff.next_random_delay();
        if deadline.is_some_and(|d| Instant::now() + delay >= d) {
            tracing::error!(error = %error, "provisioning gave up: no answer within --once-timeout");
            return Err(Failure::Failed);
        }
        tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "provisioning attempt failed");
        tokio::time::sleep(delay).await;
    };

    let device = answer
        .device_id
        .filter(|d| !d.is_empty() && !d.contains('/'))
        .unwrap_or(plan.device_id);
    let key_path = config.private_key.clone();
    let private_pem = generated.private_pem.clone();
    let device_for_file = device.clone();
    let stored =
        tokio::task::spawn_blocking(move || store(&key_path, &private_pem, &device_for_file))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
    if let Err(e) = stored {
        // The device exists on the server now; without its key this boot cannot use it.
        tracing::error!(error = %e, key = %config.private_key.display(), device = %device,
            "provisioned, but the key could not be stored");
        return Err(Failure::Failed);
    }
    tracing::info!(
        device = %device, num_id = answer.num_id.as_deref().unwrap_or(""),
        key = %config.private_key.display(), "provisioned"
    );
    Ok((generated.key, device))
}

/// Writes the key (0600), then the device id next to it. The key is the commit point: a boot
/// that finds the key but lost the id file falls back to the id that was asked for.
fn store(key_path: &Path, private_pem: &str, device: &str) -> io::Result<()> {
    write_atomically(key_path, private_pem.as_bytes(), 0o600)?;
    write_atomically(
        &device_id_file(key_path),
        format!("{device}\n").as_bytes(),
        0o644,
    )
}

/// Writes `bytes` to a temporary file (created with `mode`) next to `path`, fsyncs it and
/// renames it into place, then fsyncs the directory. Creates the directory if needed.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("the path has no file name"))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    #[cfg(unix)]
    fs::File::open(&dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpuinfo_serial_line_is_found_and_zeros_are_no_serial() {
        let pi = "processor\t: 0\nHardware\t: BCM2835\nRevision\t: a02082\nSerial\t\t: 00000000a1b2c3d4\nModel\t\t: Raspberry Pi 3\n";
        assert_eq!(cpuinfo_serial(pi).as_deref(), Some("00000000a1b2c3d4"));
        assert_eq!(cpuinfo_serial("Serial\t: 0000000000000000\n"), None);
        assert_eq!(cpuinfo_serial("processor : 0\nmodel name : x86\n"), None);
    }

    #[test]
    fn the_first_non_loopback_mac_is_taken_by_interface_name() {
        let dir = tempfile::tempdir().unwrap();
        let iface = |name: &str, mac: &str| {
            fs::create_dir_all(dir.path().join(name)).unwrap();
            fs::write(dir.path().join(name).join("address"), format!("{mac}\n")).unwrap();
        };
        iface("lo", "00:00:00:00:00:00");
        iface("wlan0", "B8:27:EB:00:00:02");
        iface("eth0", "b8:27:eb:00:00:01");
        iface("dummy", "00:00:00:00:00:00");
        assert_eq!(first_mac(dir.path()).as_deref(), Some("b8:27:eb:00:00:01"));
        fs::remove_dir_all(dir.path().join("eth0")).unwrap();
        assert_eq!(first_mac(dir.path()).as_deref(), Some("b8:27:eb:00:00:02"));
        assert_eq!(first_mac(&dir.path().join("none")), None);
    }

    #[test]
    fn derived_ids_are_checked() {
        assert_eq!(
            derived_device_id("00000000a1b2c3d4").unwrap(),
            "pi-00000000a1b2c3d4"
        );
        assert!(
            derived_device_id("has space")
                .unwrap_err()
                .contains("DEVICE_ID")
        );
        assert!(derived_device_id("a/b").is_err());
    }

    #[test]
    fn the_id_file_sits_next_to_the_key() {
        assert_eq!(
            device_id_file(Path::new("/etc/pi/keys/ec_private.pem")),
            Path::new("/etc/pi/keys/ec_private.pem.device_id")
        );
    }

    #[test]
    fn stored_files_are_complete_and_the_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("keys").join("ec_private.pem");
        store(&key, "-----BEGIN PRIVATE KEY-----\n", "pi-1").unwrap();
        assert_eq!(
            fs::read_to_string(&key).unwrap(),
            "-----BEGIN PRIVATE KEY-----\n"
        );
        assert_eq!(fs::read_to_string(device_id_file(&key)).unwrap(), "pi-1\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // Overwriting replaces, and no temporary file is left behind.
        store(&key, "second", "pi-2").unwrap();
        assert_eq!(fs::read_to_string(&key).unwrap(), "second");
        let names: Vec<_> = fs::read_dir(key.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn answers_are_read_leniently() {
        let allowed: Answer = serde_json::from_str(
            r#"{"request_id":"r","decision":"ALLOWED","device_id":"pi-1","num_id":"42","serial":"s",
                "mqtt":{"client_id":"projects/p/locations/l/registries/r/devices/pi-1"}}"#,
        )
        .unwrap();
        assert_eq!(allowed.device_id.as_deref(), Some("pi-1"));
        assert_eq!(allowed.num_id.as_deref(), Some("42"));
        let denied: Answer = serde_json::from_str(
            r#"{"decision":"DENIED","reason":"DENYLISTED","message":"serial `s` is denylisted: stolen"}"#,
        )
        .unwrap();
        assert_eq!(denied.reason.as_deref(), Some("DENYLISTED"));
        assert!(denied.message.contains("stolen"));
    }

    #[test]
    fn the_request_omits_an_unknown_mac() {
        let body = serde_json::to_value(Request {
            serial: "s",
            mac: None,
            device_id: "pi-s",
            public_key: RequestKey {
                format: "ES256_PEM",
                key: "k",
            },
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"serial": "s", "device_id": "pi-s",
                               "public_key": {"format": "ES256_PEM", "key": "k"}})
        );
    }
}
