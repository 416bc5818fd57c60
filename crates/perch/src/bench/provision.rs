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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use perch_device::SigningKey;
use perch_device::bootstrap::{self, BootstrapOptions};
use perch_device::jwt::Algorithm;
use reqwest::Method;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, NetworkOptions, Outgoing,
    Packet, QoS, TlsConfiguration, Transport,
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::Format;
use crate::datadir::read_endpoints;

/// Latencies are recorded in microseconds up to this bound (one hour).
const LATENCY_MAX_MICROS: u64 = 3_600_000_000;
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

/// Latency percentiles of one measured step.
#[derive(Debug, Serialize)]
struct Latency {
    count: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    mean_us: f64,
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

/// The admin REST API of the server under test.
#[derive(Debug)]
struct Admin {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Admin {
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}/v1/{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = response.status();
        let bytes = response.bytes().await?;
        let value: Value = if bytes.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{method} {path} answered {status} with non-JSON"))?
        };
        if !status.is_success() {
            bail!(
                "{method} {path}: {} {}",
                value["error"]["status"].as_str().unwrap_or("ERROR"),
                value["error"]["message"].as_str().unwrap_or("")
            );
        }
        Ok(value)
    }
}

/// Where devices connect and how they trust the bridge.
#[derive(Debug, Clone)]
struct Bridge {
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

impl Bridge {
    /// The TLS configuration of one simulated device, for both its connections: the shared
    /// roots, but a session cache of its own, so a device may resume its own TLS session (as one
    /// device process would) but never one another device made.
    fn device_tls(&self) -> Arc<rustls::ClientConfig> {
        let mut config = (*self.tls).clone();
        config.resumption = rustls::client::Resumption::in_memory_sessions(4);
        Arc::new(config)
    }
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
        bridge: Bridge { host, port, tls },
        bootstrap_key: Arc::new(bootstrap_key),
        request: args.request,
        publish: !args.no_publish,
        timeout: Duration::from_secs(args.timeout.max(1)),
    });
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for index in 0..args.devices {
        let storm = storm.clone();
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            provision_one(&storm, index).await
        });
    }
    let mut outcomes = Vec::with_capacity(args.devices);
    while let Some(joined) = tasks.join_next().await {
        outcomes.push(joined.unwrap_or_else(|e| Outcome {
            failure: Some(format!("task: {e}")),
            ..Default::default()
        }));
    }
    let ended = Instant::now();

    let server_provisioned = admin
        .call(
            Method::GET,
            &format!("{registry}/bootstraps/{BOOTSTRAP_ID}"),
            None,
        )
        .await
        .ok()
        .and_then(|b| {
            let p = &b["provisioned"];
            p.as_u64().or_else(|| p.as_str()?.parse().ok())
        });

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

/// Creates the topic, the registry routing events to it, and the bootstrap credential; returns
/// the registry's name and the bootstrap's private key.
async fn setup(
    admin: &Admin,
    args: &ProvisionBenchArgs,
    registry_id: &str,
    suffix: &str,
) -> Result<(String, SigningKey)> {
    let topic = format!(
        "projects/{}/topics/bench-prov-{suffix}-events",
        args.project
    );
    admin
        .call(Method::PUT, &topic, Some(&json!({})))
        .await
        .context("cannot create the events topic")?;
    let location = format!("projects/{}/locations/{}", args.project, args.location);
    let body = json!({
        "id": registry_id,
        "eventNotificationConfigs": [{ "pubsubTopicName": topic }],
    });
    admin
        .call(Method::POST, &format!("{location}/registries"), Some(&body))
        .await
        .context("cannot create the bench registry")?;
    let registry = format!("{location}/registries/{registry_id}");
    let mut bootstrap = json!({ "id": BOOTSTRAP_ID, "deviceQuota": args.devices });
    if let Some(rate) = args.max_provisions_per_second {
        bootstrap["maxProvisionsPerSecond"] = rate.into();
    }
    let created = admin
        .call(
            Method::POST,
            &format!("{registry}/bootstraps"),
            Some(&bootstrap),
        )
        .await
        .context("cannot create the bootstrap credential")?;
    let private = created["privateKey"]
        .as_str()
        .context("the server returned no privateKey for the bootstrap it made")?;
    let key = SigningKey::from_pem(private.as_bytes(), Algorithm::Es256)?;
    Ok((registry, key))
}

/// Device `index`'s claims: id, serial and MAC derived from the index.
fn claims(index: usize) -> (String, String, String) {
    let b = (index as u32).to_be_bytes();
    (
        format!("prov-{index:07}"),
        format!("{index:016x}"),
        format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3]),
    )
}

/// Step 1: a fresh P-256 key and what to send for it (a CSR or the public key); no key but the
/// request for one with `generate-key`.
fn make_key(kind: RequestKind, device_id: &str) -> Result<(Option<SigningKey>, Value)> {
    Ok(match kind {
        RequestKind::GenerateKey => (None, json!({ "generate_key": "ES256" })),
        RequestKind::PublicKey => {
            let generated = SigningKey::generate_es256()?;
            let request =
                json!({ "public_key": { "format": "ES256_PEM", "key": generated.public_pem } });
            (Some(generated.key), request)
        }
        RequestKind::Csr => {
            let generated = SigningKey::generate_es256()?;
            let pair = rcgen::KeyPair::from_pem(&generated.private_pem)?;
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, device_id);
            let request = json!({ "csr": params.serialize_request(&pair)?.pem()? });
            (Some(generated.key), request)
        }
    })
}

/// One simulated device through every step; never fails, records where it stopped instead.
async fn provision_one(storm: &Storm, index: usize) -> Outcome {
    let mut out = Outcome::default();
    let began = Instant::now();
    let (device_id, serial, mac) = claims(index);
    let tls = storm.bridge.device_tls();

    // 1. The key (and CSR).
    let t = Instant::now();
    let (key, mut body) = match make_key(storm.request, &device_id) {
        Ok(k) => k,
        Err(e) => {
            out.failure = Some(format!("key: {e}"));
            return out;
        }
    };
    out.key = Some(t.elapsed());
    body["serial"] = serial.into();
    body["mac"] = mac.into();
    body["device_id"] = device_id.clone().into();

    // 2. The claim with the bootstrap credential.
    let options = BootstrapOptions {
        project: storm.project.clone(),
        region: storm.location.clone(),
        registry: storm.registry.clone(),
        bootstrap: BOOTSTRAP_ID.to_owned(),
        host: storm.bridge.host.clone(),
        port: storm.bridge.port,
        tls: tls.clone(),
        key: storm.bootstrap_key.clone(),
        jwt_lifetime: JWT_LIFETIME,
    };
    let t = Instant::now();
    let answer = bootstrap::ask(
        &options,
        &bootstrap::new_request_id(),
        body.to_string(),
        storm.timeout,
    )
    .await;
    let answer: Value = match answer {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) => {
                out.failure = Some("claim: the answer is not JSON".into());
                return out;
            }
        },
        Err(perch_device::DeviceError::NoAnswer(_)) => {
            out.failure = Some("claim: no answer in time".into());
            return out;
        }
        Err(e) => {
            out.failure = Some(format!("claim: {e}"));
            return out;
        }
    };
    out.claim = Some(t.elapsed());
    if answer["decision"] != "ALLOWED" {
        out.failure = Some(format!(
            "claim: {} {}",
            answer["decision"].as_str().unwrap_or("no decision"),
            answer["reason"].as_str().unwrap_or("")
        ));
        return out;
    }
    out.allowed_at = Some(Instant::now());
    let Some(client_id) = answer["mqtt"]["client_id"].as_str() else {
        out.failure = Some("claim: ALLOWED without mqtt.client_id".into());
        return out;
    };
    let device = answer["device_id"].as_str().unwrap_or(&device_id);
    let key = match key {
        Some(key) => key,
        None => match answer["private_key"]
            .as_str()
            .map(|pem| SigningKey::from_pem(pem.as_bytes(), Algorithm::Es256))
        {
            Some(Ok(key)) => key,
            Some(Err(e)) => {
                out.failure = Some(format!("claim: the private key in the answer: {e}"));
                return out;
            }
            None => {
                out.failure = Some("claim: ALLOWED without the private_key asked for".into());
                return out;
            }
        },
    };

    // 3. Connect as the new device (and publish one event).
    let publish_topic = storm.publish.then(|| format!("/devices/{device}/events"));
    match connect_as_device(storm, tls, &key, client_id, publish_topic).await {
        Ok((connect, publish)) => {
            out.connect = Some(connect);
            out.publish = publish;
            out.total = Some(began.elapsed());
            out.done_at = Some(Instant::now());
        }
        Err(failure) => out.failure = Some(failure),
    }
    out
}

/// Connects as `client_id` with a JWT signed by `key` until CONNACK 0, then publishes one QoS 1
/// event to `topic` and waits for its PUBACK. Returns both latencies, or the failure's reason.
async fn connect_as_device(
    storm: &Storm,
    tls: Arc<rustls::ClientConfig>,
    key: &SigningKey,
    client_id: &str,
    topic: Option<String>,
) -> std::result::Result<(Duration, Option<Duration>), String> {
    let token = key
        .sign_jwt(&storm.project, SystemTime::now(), JWT_LIFETIME)
        .map_err(|e| format!("connect: {e}"))?;
    let mut options = MqttOptions::new(client_id, storm.bridge.host.clone(), storm.bridge.port);
    options
        .set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)))
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_credentials("unused", token);
    let (client, mut eventloop) = AsyncClient::new(options, 8);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(storm.timeout.as_secs());
    eventloop.set_network_options(network);

    let started = Instant::now();
    let mut connected: Option<Duration> = None;
    let mut published: Option<Instant> = None;
    let exchange = async {
        loop {
            let step = if connected.is_some() {
                "publish"
            } else {
                "connect"
            };
            let event = eventloop.poll().await.map_err(|e| match e {
                ConnectionError::ConnectionRefused(code) => {
                    format!("{step}: CONNACK {}", connack_code(code))
                }
                ConnectionError::NetworkTimeout => format!("{step}: TCP/TLS connect timed out"),
                e => format!("{step}: {e}"),
            })?;
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    connected = Some(started.elapsed());
                    let Some(topic) = &topic else {
                        return Ok(None);
                    };
                    published = Some(Instant::now());
                    client
                        .try_publish(topic.clone(), QoS::AtLeastOnce, false, b"{}".to_vec())
                        .map_err(|e| format!("publish: {e}"))?;
                }
                Event::Incoming(Packet::PubAck(_)) => {
                    return Ok::<_, String>(published.map(|t| t.elapsed()));
                }
                _ => {}
            }
        }
    };
    let result = match tokio::time::timeout(storm.timeout, exchange).await {
        Ok(r) => r,
        Err(_) if connected.is_some() => Err("publish: no PUBACK in time".into()),
        Err(_) => Err("connect: no CONNACK in time".into()),
    };
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    let publish = result?;
    let connect = connected.ok_or_else(|| "connect: no CONNACK".to_owned())?;
    Ok((connect, publish))
}

fn connack_code(code: ConnectReturnCode) -> u8 {
    match code {
        ConnectReturnCode::Success => 0,
        ConnectReturnCode::RefusedProtocolVersion => 1,
        ConnectReturnCode::BadClientId => 2,
        ConnectReturnCode::ServiceUnavailable => 3,
        ConnectReturnCode::BadUserNamePassword => 4,
        ConnectReturnCode::NotAuthorized => 5,
    }
}

fn latency(samples: impl Iterator<Item = Duration>) -> Result<Latency> {
    let mut h = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_MICROS, 3)?;
    for d in samples {
        h.saturating_record((d.as_micros() as u64).max(1));
    }
    if h.is_empty() {
        return Ok(Latency {
            count: 0,
            p50_us: 0,
            p99_us: 0,
            max_us: 0,
            mean_us: 0.0,
        });
    }
    Ok(Latency {
        count: h.len(),
        p50_us: h.value_at_quantile(0.50),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
        mean_us: h.mean(),
    })
}

fn summarize(
    args: &ProvisionBenchArgs,
    registry: String,
    started: Instant,
    ended: Instant,
    outcomes: &[Outcome],
    setup_ms: f64,
) -> Result<Report> {
    let provisioned = outcomes.iter().filter(|o| o.done_at.is_some()).count();
    let allowed = outcomes.iter().filter(|o| o.allowed_at.is_some()).count();
    // The storm ends when its last device does, whatever became of it.
    let seconds = ended.duration_since(started).as_secs_f64().max(1e-9);
    let mut failures = BTreeMap::new();
    for f in outcomes.iter().filter_map(|o| o.failure.as_ref()) {
        *failures.entry(f.clone()).or_insert(0) += 1;
    }
    let steps = Steps {
        key: latency(outcomes.iter().filter_map(|o| o.key))?,
        claim: latency(outcomes.iter().filter_map(|o| o.claim))?,
        connect: latency(outcomes.iter().filter_map(|o| o.connect))?,
        publish: if args.no_publish {
            None
        } else {
            Some(latency(outcomes.iter().filter_map(|o| o.publish))?)
        },
        total: latency(outcomes.iter().filter_map(|o| o.total))?,
    };
    Ok(Report {
        registry,
        bootstrap: BOOTSTRAP_ID.to_owned(),
        request: args.request,
        devices: args.devices,
        concurrency: args.concurrency,
        provisioned,
        failed: outcomes.len() - provisioned,
        seconds,
        provisions_per_second: provisioned as f64 / seconds,
        claims_per_second: allowed as f64 / seconds,
        steps,
        failures,
        server_provisioned: None,
        setup_ms,
    })
}

fn fmt_micros(us: u64) -> String {
    let us = us as f64;
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{:.1} s", us / 1e6)
    }
}

fn print_table(r: &Report) {
    let request = match r.request {
        RequestKind::Csr => "CSR",
        RequestKind::PublicKey => "public key",
        RequestKind::GenerateKey => "generate_key",
    };
    println!(
        "perch bench provision: {} devices ({request}), {} in flight, into {}",
        r.devices, r.concurrency, r.registry
    );
    println!(
        "  provisioned     {} of {} in {:.2} s = {:.0} provisions/s ({:.0} ALLOWED claims/s)",
        r.provisioned, r.devices, r.seconds, r.provisions_per_second, r.claims_per_second
    );
    println!(
        "  step            {:>7} {:>9} {:>9} {:>9}",
        "count", "p50", "p99", "max"
    );
    let mut rows = vec![
        ("1 key", &r.steps.key),
        ("2 claim", &r.steps.claim),
        ("3 connect", &r.steps.connect),
    ];
    if let Some(p) = &r.steps.publish {
        rows.push(("3 publish", p));
    }
    rows.push(("total", &r.steps.total));
    for (name, l) in rows {
        println!(
            "  {name:<15} {:>7} {:>9} {:>9} {:>9}",
            l.count,
            fmt_micros(l.p50_us),
            fmt_micros(l.p99_us),
            fmt_micros(l.max_us)
        );
    }
    if r.failures.is_empty() {
        println!("  failures        none");
    } else {
        println!("  failures        {}", r.failed);
        for (reason, n) in &r.failures {
            println!("    {n:>6}  {reason}");
        }
    }
    if let Some(p) = r.server_provisioned {
        println!(
            "  server counter  bootstrap `{}` provisioned = {p}",
            r.bootstrap
        );
    }
    println!("  setup           {:.1} ms", r.setup_ms);
}

#[cfg(test)]
mod tests {
    use clap::Parser;

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
