//! `perch bench provision`: a provisioning storm (docs/provisioning.md). `--devices` simulated
//! devices holding one bootstrap credential boot at once, `--concurrency` of them in flight; each
//!
//! 1. makes its own P-256 key with `ring` and, by default, a PKCS#10 CSR for it with `rcgen`
//!    (`--request public-key` sends the `ES256_PEM` public key instead, as `perch-agent` does;
//!    `--request generate-key` makes no key and asks the server for one),
//! 2. claims its identity over MQTT/TLS with the bootstrap credential
//!    (`perch_device::bootstrap::ask`: CONNECT, SUBSCRIBE, PUBLISH the request, read the answer,
//!    DISCONNECT) and expects `ALLOWED`,
//! 3. reconnects as the device it became (client id from the answer, a JWT signed with its new
//!    key) until CONNACK 0, and unless `--no-publish` sends one QoS 1 event and waits for its
//!    PUBACK.
//!
//! Reports provisions per second (devices through every step, over the storm's wall time),
//! p50/p99/max of each step from HDR histograms, and failures counted by reason. Nothing is
//! retried: a failure is what the storm did to that device.
//!
//! Setup goes through the admin REST API of a running server: a topic, a registry
//! `bench-prov-<random>` whose events go to it, and a bootstrap credential `storm` with a quota
//! of `--devices`. Does not own starting or stopping the server (`docs/benchmarks.md`).

mod admin;
mod device;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use perch::cli::Format;
use perch::datadir::read_endpoints;
use perch_device::SigningKey;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use admin::{Admin, server_provisioned, setup};
use device::{Bridge, provision_one};
use report::{print_table, summarize};

use crate::measure::Latency;

/// Lifetime of the bootstrap and device JWTs (the storm lasts minutes at most).
const JWT_LIFETIME: Duration = Duration::from_secs(3600);
/// Keep-alive of the device connection.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Largest MQTT packet either way.
const MAX_PACKET_BYTES: usize = 64 * 1024;
/// How long the DISCONNECT of the device connection may take to leave.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);
/// One admin REST call may take this long.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The bootstrap credential's id in the bench registry.
const BOOTSTRAP_ID: &str = "storm";

/// What a device sends to claim its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// A PKCS#10 CSR made with rcgen (the device keeps its key; the CSR's key is registered)
    Csr,
    /// The ES256_PEM public key, as perch-agent sends it
    PublicKey,
    /// No key: `"generate_key": "ES256"`, the server makes it and returns the private key
    GenerateKey,
}

/// `perch bench provision`
#[derive(Debug, Args)]
pub struct ProvisionBenchArgs {
    /// Data dir of a running `perch serve`: endpoints.json gives the admin, MQTT and CA
    #[arg(long, required_unless_present = "endpoint")]
    data_dir: Option<PathBuf>,
    /// Admin REST endpoint, HOST:PORT or a URL (default: from DATA_DIR/endpoints.json)
    #[arg(long, requires_all = ["mqtt", "ca"])]
    endpoint: Option<String>,
    /// Admin token (default: DATA_DIR/admin-token if it exists; none for `serve --dev`)
    #[arg(long, env = "PERCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// MQTT/TLS bridge, HOST:PORT (default: from DATA_DIR/endpoints.json)
    #[arg(long)]
    mqtt: Option<String>,
    /// CA certificate (PEM) the bridge's certificate chains to (default: from endpoints.json)
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Devices to provision
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Devices in flight at once
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// What each device sends with its claim
    #[arg(long, value_enum, default_value_t = RequestKind::Csr)]
    request: RequestKind,
    /// The bootstrap's `maxProvisionsPerSecond` (default: the server's, 5,000/s)
    #[arg(long)]
    max_provisions_per_second: Option<u32>,
    /// Stop at CONNACK 0 as the new device; do not publish one QoS 1 event
    #[arg(long)]
    no_publish: bool,
    /// Seconds each step (claim, connect, publish) may take before it counts as failed
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Project of the registry
    #[arg(long, default_value = "perch")]
    project: String,
    /// Location (region) of the registry
    #[arg(long, default_value = "us-central1")]
    location: String,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Serialize)]
struct Steps {
    /// Step 1: generate the P-256 key (and make the CSR, with `--request csr`); nothing with
    /// `--request generate-key`.
    key: Latency,
    /// Step 2: the bootstrap exchange, from TCP connect to the answer read and DISCONNECT sent.
    claim: Latency,
    /// Step 3: connecting as the new device, from TCP connect to CONNACK 0.
    connect: Latency,
    /// Step 3b: one QoS 1 event as the new device, PUBLISH to PUBACK.
    publish: Option<Latency>,
    /// The whole device, from taking its slot to its last step.
    total: Latency,
}

#[derive(Debug, Serialize)]
struct Report {
    registry: String,
    bootstrap: String,
    request: RequestKind,
    devices: usize,
    concurrency: usize,
    /// Devices through every step.
    provisioned: usize,
    failed: usize,
    /// From the first device starting to the last finishing.
    seconds: f64,
    /// `provisioned / seconds`.
    provisions_per_second: f64,
    /// Answers of `ALLOWED` per second over the same wall time.
    claims_per_second: f64,
    steps: Steps,
    /// Failures by step and reason.
    failures: BTreeMap<String, usize>,
    /// The bootstrap's `provisioned` counter read back from the server after the storm.
    server_provisioned: Option<u64>,
    /// Creating the topic, registry and bootstrap.
    setup_ms: f64,
}

/// Everything every simulated device shares.
#[derive(Debug)]
struct Storm {
    project: String,
    location: String,
    registry: String,
    bridge: Bridge,
    bootstrap_key: Arc<SigningKey>,
    request: RequestKind,
    publish: bool,
    timeout: Duration,
}

/// What one device measured, or the step and reason it failed at.
#[derive(Debug, Default)]
struct Outcome {
    key: Option<Duration>,
    claim: Option<Duration>,
    connect: Option<Duration>,
    publish: Option<Duration>,
    total: Option<Duration>,
    /// When the device finished every step.
    done_at: Option<Instant>,
    allowed_at: Option<Instant>,
    failure: Option<String>,
}

pub async fn run(args: ProvisionBenchArgs) -> Result<()> {
    if args.devices == 0 || args.concurrency == 0 {
        bail!("--devices and --concurrency must be at least 1");
    }
    let (admin, bridge) = server(&args)?;

    let setup_started = Instant::now();
    let suffix = format!("{:08x}", rand::random::<u32>());
    let registry_id = format!("bench-prov-{suffix}");
    let (registry, bootstrap_key) = setup(&admin, &args, &registry_id, &suffix).await?;
    let setup_ms = setup_started.elapsed().as_secs_f64() * 1e3;
    if args.format == Format::Table {
        eprintln!(
            "storm: {} devices, {} in flight, into {registry} (bootstrap `{BOOTSTRAP_ID}`)…",
            args.devices, args.concurrency
        );
    }

    let storm = Arc::new(Storm {
        project: args.project.clone(),
        location: args.location.clone(),
        registry: registry_id.clone(),
        bridge,
        bootstrap_key: Arc::new(bootstrap_key),
        request: args.request,
        publish: !args.no_publish,
        timeout: Duration::from_secs(args.timeout.max(1)),
    });
    let started = Instant::now();
    let outcomes = storm_devices(storm, args.devices, args.concurrency).await;
    let ended = Instant::now();

    let server_provisioned = server_provisioned(&admin, &registry).await;
    let report = summarize(&args, registry, started, ended, &outcomes, setup_ms)?;
    let report = Report {
        server_provisioned,
        ..report
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print_table(&report),
    }
    Ok(())
}

/// The server under test, from the flags and the data dir's `endpoints.json`: its admin API and
/// the MQTT/TLS bridge the devices connect to.
fn server(args: &ProvisionBenchArgs) -> Result<(Admin, Bridge)> {
    let endpoints = match &args.data_dir {
        Some(dir) => Some(read_endpoints(dir)?),
        None => None,
    };
    let admin_base = match (&args.endpoint, &endpoints) {
        (Some(e), _) if e.starts_with("http://") || e.starts_with("https://") => {
            e.trim_end_matches('/').to_owned()
        }
        (Some(e), _) => format!("http://{}", e.trim_end_matches('/')),
        (None, Some(ep)) => format!("http://{}", ep.admin),
        (None, None) => bail!("pass --data-dir, or --endpoint with --mqtt and --ca"),
    };
    let token = args.token.clone().or_else(|| {
        let dir = args.data_dir.as_ref()?;
        let token = std::fs::read_to_string(dir.join("admin-token")).ok()?;
        Some(token.trim().to_owned()).filter(|t| !t.is_empty())
    });
    let mqtt = match (&args.mqtt, &endpoints) {
        (Some(m), _) => m.clone(),
        (None, Some(ep)) => ep.mqtt.clone().context(
            "the server has no MQTT/TLS listener (endpoints.json has no mqtt); pass --mqtt",
        )?,
        (None, None) => bail!("pass --mqtt HOST:PORT"),
    };
    let ca = match (&args.ca, &endpoints) {
        (Some(c), _) => c.clone(),
        (None, Some(ep)) => PathBuf::from(&ep.ca),
        (None, None) => bail!("pass --ca FILE"),
    };
    let (host, port) = mqtt
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .with_context(|| format!("--mqtt `{mqtt}` is not HOST:PORT"))?;
    // A wildcard listen address is reached on loopback.
    let host = match host {
        "0.0.0.0" | "::" => "127.0.0.1",
        h => h,
    }
    .to_owned();
    let ca_pem = std::fs::read(&ca).with_context(|| format!("cannot read CA {}", ca.display()))?;
    let tls = perch_device::tls::client_config(&ca_pem)?;
    let admin = Admin {
        base: admin_base,
        token,
        http: reqwest::Client::builder()
            .timeout(ADMIN_TIMEOUT)
            .no_proxy()
            .build()?,
    };
    Ok((admin, Bridge { host, port, tls }))
}

/// Every device through `provision_one`, `concurrency` at a time; their outcomes in the order
/// they finished.
async fn storm_devices(storm: Arc<Storm>, devices: usize, concurrency: usize) -> Vec<Outcome> {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    for index in 0..devices {
        let storm = storm.clone();
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            provision_one(&storm, index).await
        });
    }
    let mut outcomes = Vec::with_capacity(devices);
    while let Some(joined) = tasks.join_next().await {
        outcomes.push(joined.unwrap_or_else(|e| Outcome {
            failure: Some(format!("task: {e}")),
            ..Default::default()
        }));
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::device::{claims, make_key};
    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProvisionBenchArgs,
    }

    fn parse(flags: &[&str]) -> Result<ProvisionBenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(flags.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn a_data_dir_or_all_of_endpoint_mqtt_and_ca_is_required() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--endpoint", "127.0.0.1:1"]).is_err());
        assert!(parse(&["--endpoint", "h:1", "--mqtt", "h:2", "--ca", "ca.pem"]).is_ok());
        let a = parse(&["--data-dir", "d"]).unwrap();
        assert_eq!((a.devices, a.concurrency), (1000, 200));
        assert_eq!(a.request, RequestKind::Csr);
    }

    #[test]
    fn requests_carry_a_csr_or_a_public_key_the_server_accepts() {
        let (_, csr) = make_key(RequestKind::Csr, "prov-0000001").unwrap();
        let pem = csr["csr"].as_str().unwrap();
        assert!(
            pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
            "{pem}"
        );
        let (_, public) = make_key(RequestKind::PublicKey, "prov-0000001").unwrap();
        assert_eq!(public["public_key"]["format"], "ES256_PEM");
        let (key, ask) = make_key(RequestKind::GenerateKey, "prov-0000001").unwrap();
        assert!(key.is_none());
        assert_eq!(ask["generate_key"], "ES256");
        let (id, serial, mac) = claims(258);
        assert_eq!(id, "prov-0000258");
        assert_eq!(serial, "0000000000000102");
        assert_eq!(mac, "02:00:00:00:01:02");
    }
}
