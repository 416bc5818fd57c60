//! `perch bench devices`: a device load generator. `--devices` simulated devices connect over
//! MQTT 3.1.1 (TLS unless told otherwise) at `--connect-rate`, each publishes `--size`-byte
//! messages every `--publish-interval` at `--qos`, for `--duration`; it reports connects per
//! second, publishes sent and acknowledged per second, PUBACK latency, errors by kind, and its
//! own CPU, so a reader can tell when the generator rather than the server is the bottleneck.
//!
//! Two targets. **Perch** (the default) creates a registry routing telemetry to a new topic
//! and the devices through the admin REST API (or reuses `--registry`), signs one JWT per
//! connect with one shared ES256 key, renews tokens by reconnecting, and with
//! `--verify-subscription` counts what a subscription created before the load received.
//! **`--broker HOST:PORT`** drives any MQTT 3.1.1 broker (Mosquitto, …) with an optional
//! username and password, publishing to `bench/<device>`.
//!
//! Does not own starting servers: `docs/benchmarks.md` has the script that runs Perch and
//! Mosquitto side by side.

mod load;
mod perch;
mod progress;
mod publisher;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use perch_core::{Clock, SystemClock};
use perch_device::{Algorithm, SigningKey};
use rumqttc::QoS;

use crate::measure::run_name;
use ::perch::cli::client::AdminClient;
use ::perch::cli::{ClientArgs, Format};
use ::perch::datadir::read_endpoints;
use load::{Load, Plan};
use progress::Cpu;
use report::{Outcome, Report};

/// How long, after the deadline, outstanding publishes may still get their PUBACK.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest JWT lifetime accepted: a renewal must not come before the connection is up.
const JWT_LIFETIME_MIN: Duration = Duration::from_secs(10);

/// `perch bench devices`
#[derive(Debug, Args)]
pub struct DevicesBenchArgs {
    /// Simulated devices, one MQTT connection each
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// New connections per second while the devices start
    #[arg(long, default_value_t = 100.0)]
    connect_rate: f64,
    /// Seconds between two publishes of one device (e.g. 0.1 = 10 per second)
    #[arg(long, default_value_t = 1.0)]
    publish_interval: f64,
    /// Payload bytes (at least 12 with --verify-subscription: the stamp that identifies it)
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// QoS of the publishes: 0 or 1
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Seconds from the first connect until publishing stops
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Publishes one device may have awaiting their PUBACK; a due publish beyond it is skipped
    #[arg(long, default_value_t = 16)]
    max_inflight: usize,
    /// MQTT keep-alive, seconds
    #[arg(long, default_value_t = 60)]
    keep_alive: u64,
    /// Seconds each JWT is valid (Perch mode); devices reconnect after nine tenths of it
    #[arg(long, default_value_t = 1200)]
    jwt_lifetime: u64,
    /// Any MQTT 3.1.1 broker instead of Perch, HOST:PORT (topic bench/<device>)
    #[arg(long, conflicts_with_all = ["registry", "verify_subscription", "key_file", "endpoint", "mqtt"])]
    broker: Option<String>,
    /// Username for --broker
    #[arg(long, requires = "broker")]
    username: Option<String>,
    /// Password for --broker
    #[arg(
        long,
        requires = "broker",
        env = "BENCH_MQTT_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// CA file to trust; TLS is used when given (Perch mode: default DATA_DIR/tls/ca.pem)
    #[arg(long)]
    cafile: Option<PathBuf>,
    /// Connect without TLS (Perch's --mqtt-plain listener, or a plain broker port)
    #[arg(long, conflicts_with = "cafile")]
    plain: bool,
    /// Perch's data dir, for endpoints.json and admin-token
    #[arg(long, env = "PERCH_DATA_DIR", default_value = "perch-data")]
    data_dir: PathBuf,
    /// Perch's admin REST endpoint (default: from DATA_DIR/endpoints.json; token from
    /// PERCH_TOKEN or DATA_DIR/admin-token)
    #[arg(long, env = "PERCH_ENDPOINT")]
    endpoint: Option<String>,
    /// Perch's MQTT address, HOST:PORT (default: from DATA_DIR/endpoints.json)
    #[arg(long)]
    mqtt: Option<String>,
    /// Project of the registry
    #[arg(long, env = "PERCH_PROJECT", default_value = "perch")]
    project: String,
    /// Region of the registry
    #[arg(long, default_value = "us-central1")]
    region: String,
    /// Registry to use or create, holding devices bench-000000… (default: a new bench-<ms>)
    #[arg(long)]
    registry: Option<String>,
    /// The devices' ES256 private key: read if it exists, else generated and written here
    /// (needed to reuse a registry's devices in a later run)
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Device creates in flight
    #[arg(long, default_value_t = 16)]
    create_concurrency: usize,
    /// Count what a subscription created before the load receives, against the PUBACKs
    #[arg(long)]
    verify_subscription: bool,
    /// The server's pid, to report its CPU and memory beside the generator's
    #[arg(long)]
    server_pid: Option<u32>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Where the devices connect and who they are.
#[derive(Debug, Clone)]
pub(super) struct Target {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    identity: Identity,
}

#[derive(Debug, Clone)]
enum Identity {
    Perch {
        /// `projects/P/locations/L/registries/R`
        registry: String,
        project: String,
        key: Arc<SigningKey>,
        jwt_lifetime: Duration,
    },
    Broker {
        username: Option<String>,
        password: Option<String>,
    },
}

impl Target {
    fn client_id(&self, index: usize) -> String {
        match &self.identity {
            Identity::Perch { registry, .. } => {
                format!("{registry}/devices/{}", perch::device_id(index))
            }
            Identity::Broker { .. } => perch::device_id(index),
        }
    }

    fn topic(&self, index: usize) -> String {
        match &self.identity {
            Identity::Perch { .. } => format!("/devices/{}/events", perch::device_id(index)),
            Identity::Broker { .. } => format!("bench/{}", perch::device_id(index)),
        }
    }

    /// Username and password for the next CONNECT: a freshly signed JWT for Perch.
    fn credentials(&self) -> Result<Option<(String, String)>, perch_device::DeviceError> {
        match &self.identity {
            Identity::Perch {
                project,
                key,
                jwt_lifetime,
                ..
            } => {
                let token = key.sign_jwt(project, SystemClock.now().into(), *jwt_lifetime)?;
                Ok(Some(("unused".into(), token)))
            }
            Identity::Broker {
                username: Some(u),
                password,
            } => Ok(Some((u.clone(), password.clone().unwrap_or_default()))),
            Identity::Broker { .. } => Ok(None),
        }
    }

    /// When a connection must be renewed (Perch: nine tenths of the JWT lifetime).
    fn renew_after(&self) -> Option<Duration> {
        match &self.identity {
            Identity::Perch { jwt_lifetime, .. } => {
                Some(perch_device::client::renewal_delay(*jwt_lifetime))
            }
            Identity::Broker { .. } => None,
        }
    }
}

fn split_host_port(address: &str, flag: &str) -> Result<(String, u16)> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("{flag} `{address}` is not HOST:PORT"))?;
    let port = port
        .parse()
        .with_context(|| format!("{flag} `{address}` has no valid port"))?;
    // A server listening on every interface is reached on loopback, which its certificate names.
    let host = match host.trim_start_matches('[').trim_end_matches(']') {
        "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        h => h,
    };
    Ok((host.to_owned(), port))
}

fn tls_config(cafile: Option<&PathBuf>) -> Result<Option<Arc<rustls::ClientConfig>>> {
    let Some(path) = cafile else { return Ok(None) };
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read CA file {}", path.display()))?;
    let config = perch_device::tls::client_config(&pem)
        .with_context(|| format!("cannot use CA file {}", path.display()))?;
    Ok(Some(config))
}

fn check_args(args: &DevicesBenchArgs) -> Result<()> {
    if args.devices == 0 || args.max_inflight == 0 || args.create_concurrency == 0 {
        bail!("--devices, --max-inflight and --create-concurrency must be at least 1");
    }
    if !(args.connect_rate > 0.0 && args.connect_rate.is_finite()) {
        bail!("--connect-rate must be a positive number of connections per second");
    }
    if !(args.publish_interval >= 0.001 && args.publish_interval.is_finite()) {
        bail!("--publish-interval must be at least 0.001 s");
    }
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        bail!("--duration must be a positive number of seconds");
    }
    if args.verify_subscription && args.size < publisher::STAMP_BYTES {
        bail!(
            "--verify-subscription needs --size of at least {} bytes",
            publisher::STAMP_BYTES
        );
    }
    if args.broker.is_none() && Duration::from_secs(args.jwt_lifetime) < JWT_LIFETIME_MIN {
        bail!(
            "--jwt-lifetime must be at least {} s",
            JWT_LIFETIME_MIN.as_secs()
        );
    }
    if args.keep_alive == 0 {
        bail!("--keep-alive must be at least 1 s");
    }
    Ok(())
}

pub async fn run(args: DevicesBenchArgs) -> Result<()> {
    check_args(&args)?;
    let (target, setup, admin) = match &args.broker {
        Some(broker) => (broker_target(&args, broker)?, None, None),
        None => {
            let (target, setup, admin) = perch_target(&args).await?;
            (target, Some(setup), Some(admin))
        }
    };

    let load = Load::new();
    let plan = Arc::new(plan(&args, load.stats.started));
    let cpu_start = Cpu::read(args.server_pid);
    let progress = progress::spawn_progress(load.stats.clone(), plan.clone(), args.server_pid);
    load.start_devices(Arc::new(target.clone()), plan.clone())
        .await;
    tokio::time::sleep_until(plan.deadline).await;
    let stats = &load.stats;
    stats
        .acked_at_deadline
        .store(stats.acked.load(Ordering::Relaxed), Ordering::Relaxed);
    let cpu_at_deadline = Cpu::read(args.server_pid);
    load.finish(DRAIN_TIMEOUT).await;
    let cpu_end = Cpu::read(args.server_pid);
    let wall = load.stats.started.elapsed();
    let timeline = progress::stop_progress(progress).await;

    let verification = match (&admin, setup.as_ref().and_then(|s| s.subscription.as_ref())) {
        (Some(client), Some(subscription)) => {
            let stats = &load.stats;
            let expected = if plan.qos == QoS::AtMostOnce {
                stats.written.load(Ordering::Relaxed)
            } else {
                stats.acked.load(Ordering::Relaxed)
            };
            eprintln!("pulling from {subscription}");
            Some(perch::verify(client, subscription, expected).await?)
        }
        _ => None,
    };
    let outcome = Outcome {
        setup,
        verification,
        cpu: [cpu_start, cpu_at_deadline, cpu_end],
        wall,
        timeline,
    };
    let report = Report::new(&args, &target, &plan, &load.stats, outcome);
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => report.print_table(),
    }
    Ok(())
}

/// `--broker HOST:PORT`: any MQTT broker, with the optional username and password.
fn broker_target(args: &DevicesBenchArgs, broker: &str) -> Result<Target> {
    let (host, port) = split_host_port(broker, "--broker")?;
    Ok(Target {
        host,
        port,
        tls: if args.plain {
            None
        } else {
            tls_config(args.cafile.as_ref())?
        },
        identity: Identity::Broker {
            username: args.username.clone(),
            password: args.password.clone(),
        },
    })
}

/// Perch: finds the bridge, then creates (or finds) the registry and its devices through the
/// admin API; returns the target, what setup made, and the admin client for verification.
async fn perch_target(args: &DevicesBenchArgs) -> Result<(Target, perch::Setup, Arc<AdminClient>)> {
    let client = Arc::new(AdminClient::new(&ClientArgs {
        endpoint: args.endpoint.clone(),
        data_dir: args.data_dir.clone(),
        project: args.project.clone(),
        format: args.format,
    })?);
    let endpoints = read_endpoints(&args.data_dir).ok();
    let mqtt = match (&args.mqtt, &endpoints) {
        (Some(m), _) => m.clone(),
        (None, Some(e)) if args.plain => e
            .mqtt_plain
            .clone()
            .context("the server has no --mqtt-plain listener; drop --plain or pass --mqtt")?,
        (None, Some(e)) => e.mqtt.clone().context("the server has no MQTT listener")?,
        (None, None) => bail!("pass --mqtt HOST:PORT, or --data-dir of a running server"),
    };
    let (host, port) = split_host_port(&mqtt, "--mqtt")?;
    let cafile = match (&args.cafile, &endpoints) {
        _ if args.plain => None,
        (Some(f), _) => Some(f.clone()),
        (None, Some(e)) => Some(PathBuf::from(&e.ca)),
        (None, None) => Some(args.data_dir.join("tls/ca.pem")),
    };
    let registry_id = match &args.registry {
        Some(r) => r.clone(),
        None => run_name(&SystemClock),
    };
    let (private, public) = perch::device_key(args.key_file.as_deref())?;
    let key = SigningKey::from_pem(private.as_bytes(), Algorithm::Es256)
        .context("cannot sign with the device key")?;
    let location = format!("projects/{}/locations/{}", args.project, args.region);
    eprintln!(
        "creating or finding {} devices in {location}/registries/{registry_id}",
        args.devices
    );
    let prepared = perch::prepare(
        client.clone(),
        &location,
        &registry_id,
        &public,
        args.devices,
        args.create_concurrency,
        args.verify_subscription,
    )
    .await?;
    if prepared.devices_existing > 0 && args.key_file.is_none() {
        bail!(
            "registry {} already holds bench devices with another key; pass the --key-file that created them",
            prepared.registry
        );
    }
    let target = Target {
        host,
        port,
        tls: tls_config(cafile.as_ref())?,
        identity: Identity::Perch {
            registry: prepared.registry.clone(),
            project: args.project.clone(),
            key: Arc::new(key),
            jwt_lifetime: Duration::from_secs(args.jwt_lifetime),
        },
    };
    Ok((target, prepared, client))
}

/// What every device does, from the flags; the load runs `--duration` from `started`.
fn plan(args: &DevicesBenchArgs, started: tokio::time::Instant) -> Plan {
    Plan {
        devices: args.devices,
        connect_rate: args.connect_rate,
        publish_interval: Duration::from_secs_f64(args.publish_interval),
        size: args.size,
        qos: if args.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        },
        max_inflight: args.max_inflight,
        keep_alive: Duration::from_secs(args.keep_alive),
        deadline: started + Duration::from_secs_f64(args.duration),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: DevicesBenchArgs,
    }

    fn parse(flags: &[&str]) -> Result<DevicesBenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(flags.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn broker_mode_excludes_perch_flags_and_credentials_need_a_broker() {
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--broker", "localhost:1883", "--username", "u"]).is_ok());
        assert!(parse(&["--username", "u"]).is_err());
        assert!(parse(&["--broker", "h:1", "--verify-subscription"]).is_err());
        assert!(parse(&["--broker", "h:1", "--registry", "r"]).is_err());
        assert!(parse(&["--qos", "2"]).is_err());
        assert!(parse(&["--plain", "--cafile", "ca.pem"]).is_err());
    }

    #[test]
    fn arguments_out_of_range_are_refused_with_the_flag_named() {
        let check = |flags: &[&str], want: &str| {
            let err = check_args(&parse(flags).unwrap()).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        };
        check(&["--devices", "0"], "--devices");
        check(&["--publish-interval", "0"], "--publish-interval");
        check(&["--connect-rate", "0"], "--connect-rate");
        check(&["--verify-subscription", "--size", "4"], "--size");
        check(&["--jwt-lifetime", "5"], "--jwt-lifetime");
        assert!(check_args(&parse(&["--broker", "h:1", "--jwt-lifetime", "5"]).unwrap()).is_ok());
    }

    #[test]
    fn addresses_split_and_wildcards_become_loopback() {
        assert_eq!(
            split_host_port("0.0.0.0:8883", "--mqtt").unwrap(),
            ("127.0.0.1".to_owned(), 8883)
        );
        assert_eq!(
            split_host_port("localhost:1883", "--broker").unwrap(),
            ("localhost".to_owned(), 1883)
        );
        assert_eq!(
            split_host_port("[::]:1", "--mqtt").unwrap(),
            ("::1".to_owned(), 1)
        );
        assert!(split_host_port("nohost", "--broker").is_err());
    }
}
