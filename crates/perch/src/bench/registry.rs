//! `perch bench registry`: how fast the registry creates devices, how fast it finds one, how
//! large its data dir grows and how long it takes to open (issue 3).
//!
//! Two modes. `--api` drives a running server through the gRPC DeviceManager API, as a
//! provisioning script would: one CreateDevice per device, `--concurrency` requests in flight.
//! `--store` writes straight into the embedded store through `RegistryService::create_devices`,
//! `--batch` devices per transaction, for sizes the API would take too long to build. Both then
//! time GetDevice by string id and by numeric id for random devices, sequentially and at
//! `--concurrency`.
//!
//! Devices are always named `dev-0000000`, `dev-0000001`, …, so `--lookups-only --registry R`
//! can time lookups in a registry that an earlier run of either mode filled.
//!
//! Does not own starting or stopping servers: `docs/benchmarks.md` has the scripts that time a
//! server's start-up and read its memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use perch_core::model::{Device, DeviceCredential, PublicKeyFormat, Registry};
use perch_core::{
    DeviceId, DeviceName, DeviceRef, LocationName, RegistryId, RegistryName, SystemClock,
};
use perch_proto::iot;
use perch_proto::iot::device_manager_client::DeviceManagerClient;
use perch_registry::{RegistryService, RegistryServiceOptions};
use perch_store::embedded::EmbeddedRegistryStore;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::Format;
use crate::datadir::{DataDir, read_endpoints};

/// Distinct device keys to generate; devices reuse them round-robin (key generation is not
/// what is measured, and the registry does not require keys to be unique).
const DEVICE_KEYS: usize = 8;
/// Latencies are recorded in microseconds up to this bound (one hour).
const LATENCY_MAX_MICROS: u64 = 3_600_000_000;

/// `perch bench registry`
#[derive(Debug, Args)]
pub struct RegistryBenchArgs {
    /// Through the gRPC DeviceManager API of a running server
    #[arg(long, conflicts_with = "store", required_unless_present = "store")]
    api: bool,
    /// Straight into the embedded store in --data-dir (no server may be running on it)
    #[arg(long, requires = "data_dir")]
    store: bool,
    /// gRPC address of the server, HOST:PORT (default: from DATA_DIR/endpoints.json)
    #[arg(long)]
    endpoint: Option<String>,
    /// Admin token (default: DATA_DIR/admin-token if it exists; none for `serve --dev`)
    #[arg(long, env = "PERCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The server's data dir (--api) or the store's (--store)
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Devices to create (or, with --lookups-only, that the registry holds)
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Requests in flight: creates (--api) and the concurrent lookup rounds
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Devices per transaction (--store)
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Lookups per round (four rounds: by id and by numId, sequential and concurrent)
    #[arg(long, default_value_t = 10_000)]
    lookups: usize,
    /// Create nothing: time lookups in --registry, which holds --devices bench devices
    #[arg(long, requires = "registry")]
    lookups_only: bool,
    /// Registry id (default: a new `bench-<unix ms>`)
    #[arg(long)]
    registry: Option<String>,
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
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    mean_us: f64,
}

#[derive(Debug, Serialize)]
struct CreateFigures {
    devices: usize,
    seconds: f64,
    devices_per_second: f64,
    /// What `latency` times: one CreateDevice request, or one batch transaction.
    step: String,
    latency: Latency,
}

#[derive(Debug, Serialize)]
struct LookupFigures {
    by: &'static str,
    concurrency: usize,
    count: usize,
    per_second: f64,
    latency: Latency,
}

/// Bytes the files of a directory take: allocated on disk, and their lengths.
#[derive(Debug, Serialize)]
struct DirSize {
    disk_bytes: u64,
    apparent_bytes: u64,
}

/// Opening the store and answering the first lookup, in milliseconds.
#[derive(Debug, Serialize)]
struct Startup {
    open_ms: f64,
    first_lookup_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    registry: String,
    devices: usize,
    concurrency: usize,
    batch: Option<usize>,
    /// `--store`: opening the store before anything else.
    open_ms: Option<f64>,
    create: Option<CreateFigures>,
    /// The first GetDevice (after connecting, or after creating).
    first_lookup_ms: f64,
    lookups: Vec<LookupFigures>,
    data_dir: Option<DirSize>,
    /// `--store`: closing the store, then opening it again and looking up one device.
    reopen: Option<Startup>,
}

type Client = DeviceManagerClient<InterceptedService<Channel, BearerToken>>;

/// Adds `authorization: Bearer …` to every call when a token is known.
#[derive(Debug, Clone)]
struct BearerToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

/// Where lookups go: a server over gRPC, or the service on an open store.
#[derive(Debug, Clone)]
enum Target {
    Api {
        client: Client,
        registry: String,
    },
    Store {
        service: RegistryService,
        registry: RegistryName,
    },
}

impl Target {
    /// Looks a device up and returns its numeric id.
    async fn get_device(&mut self, device: &DeviceRef) -> Result<u64> {
        match self {
            Target::Api { client, registry } => {
                let name = format!("{registry}/devices/{device}");
                let found = client
                    .get_device(iot::GetDeviceRequest {
                        name: name.clone(),
                        field_mask: None,
                    })
                    .await
                    .with_context(|| format!("GetDevice {name} failed"))?;
                Ok(found.into_inner().num_id)
            }
            Target::Store { service, registry } => {
                let name = DeviceName {
                    registry: registry.clone(),
                    device: device.clone(),
                };
                let found = service
                    .get_device(&name)
                    .await
                    .with_context(|| format!("get_device {name} failed"))?;
                Ok(found.num_id)
            }
        }
    }
}

/// The bench's device names: `dev-0000000`, `dev-0000001`, …
fn device_id(i: usize) -> DeviceId {
    format!("dev-{i:07}")
        .parse()
        .expect("dev-NNNNNNN is a valid device id")
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, 3).expect("the bounds are valid constants")
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

fn latency(h: &Histogram<u64>) -> Latency {
    Latency {
        p50_us: h.value_at_quantile(0.50),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
        mean_us: h.mean(),
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Public keys (ES256_PEM) that the bench's devices use.
fn device_keys() -> Result<Vec<String>> {
    (0..DEVICE_KEYS)
        .map(|_| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .context("cannot generate a P-256 key")?;
            Ok(key.public_key_pem())
        })
        .collect()
}

pub async fn run(args: RegistryBenchArgs) -> Result<()> {
    if args.devices == 0 || args.concurrency == 0 || args.batch == 0 {
        bail!("--devices, --concurrency and --batch must be at least 1");
    }
    let registry_id = match &args.registry {
        Some(r) => r.clone(),
        None => format!("bench-{}", chrono::Utc::now().timestamp_millis()),
    };
    let registry_id: RegistryId = registry_id
        .parse()
        .with_context(|| format!("--registry `{registry_id}` is not a valid registry id"))?;
    let location = LocationName {
        project: args.project.clone(),
        location: args.location.clone(),
    };
    let report = if args.api {
        run_api(&args, location, registry_id).await?
    } else {
        run_store(&args, location, registry_id).await?
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print_table(&report),
    }
    Ok(())
}

async fn connect(args: &RegistryBenchArgs) -> Result<Client> {
    let endpoint = match (&args.endpoint, &args.data_dir) {
        (Some(e), _) => e.clone(),
        (None, Some(dir)) => read_endpoints(dir)?.grpc,
        (None, None) => bail!("--api needs --endpoint HOST:PORT or the server's --data-dir"),
    };
    if endpoint.starts_with("https://") {
        bail!("the bench speaks plain HTTP/2 only; run it against a loopback --grpc listener");
    }
    let url = if endpoint.starts_with("http://") {
        endpoint
    } else {
        format!("http://{endpoint}")
    };
    let token = match (&args.token, &args.data_dir) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(dir)) => std::fs::read_to_string(dir.join("admin-token"))
            .ok()
            .map(|t| t.trim().to_owned()),
        (None, None) => None,
    };
    let token = token
        .map(|t| MetadataValue::try_from(format!("Bearer {t}")))
        .transpose()
        .context("the admin token has characters a header cannot carry")?;
    let channel = Channel::from_shared(url.clone())
        .with_context(|| format!("`{url}` is not a valid endpoint"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}; is `perch serve` running?"))?;
    Ok(DeviceManagerClient::with_interceptor(
        channel,
        BearerToken(token),
    ))
}

async fn run_api(
    args: &RegistryBenchArgs,
    location: LocationName,
    registry_id: RegistryId,
) -> Result<Report> {
    let mut client = connect(args).await?;
    let registry = location.registry(registry_id.clone());
    let create = if args.lookups_only {
        None
    } else {
        client
            .create_device_registry(iot::CreateDeviceRegistryRequest {
                parent: location.to_string(),
                device_registry: Some(iot::DeviceRegistry {
                    id: registry_id.to_string(),
                    ..Default::default()
                }),
            })
            .await
            .with_context(|| format!("cannot create registry {registry}"))?;
        Some(create_devices_api(&client, &registry.to_string(), args).await?)
    };
    let target = Target::Api {
        client,
        registry: registry.to_string(),
    };
    let (first_lookup_ms, lookups) = measure_lookups(target, args).await?;
    let data_dir = match &args.data_dir {
        Some(dir) => Some(dir_size(dir)?),
        None => None,
    };
    Ok(Report {
        mode: "api",
        registry: registry.to_string(),
        devices: args.devices,
        concurrency: args.concurrency,
        batch: None,
        open_ms: None,
        create,
        first_lookup_ms,
        lookups,
        data_dir,
        reopen: None,
    })
}

/// One CreateDevice per device, `--concurrency` workers pulling the next index.
async fn create_devices_api(
    client: &Client,
    registry: &str,
    args: &RegistryBenchArgs,
) -> Result<CreateFigures> {
    let keys = Arc::new(device_keys()?);
    let next = Arc::new(AtomicUsize::new(0));
    let total = args.devices;
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (mut client, keys, next) = (client.clone(), keys.clone(), next.clone());
            let registry = registry.to_owned();
            tokio::spawn(async move {
                let mut histogram = new_histogram();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok::<_, anyhow::Error>(histogram);
                    }
                    let device = iot::Device {
                        id: device_id(i).to_string(),
                        credentials: vec![iot::DeviceCredential {
                            expiration_time: None,
                            credential: Some(iot::device_credential::Credential::PublicKey(
                                iot::PublicKeyCredential {
                                    format: iot::PublicKeyFormat::Es256Pem as i32,
                                    key: keys[i % keys.len()].clone(),
                                },
                            )),
                        }],
                        ..Default::default()
                    };
                    let t = Instant::now();
                    client
                        .create_device(iot::CreateDeviceRequest {
                            parent: registry.clone(),
                            device: Some(device),
                        })
                        .await
                        .with_context(|| format!("cannot create device {}", device_id(i)))?;
                    record(&mut histogram, t.elapsed());
                    report_progress("created", i + 1, total);
                }
            })
        })
        .collect();
    let mut histogram = new_histogram();
    for worker in workers {
        histogram.add(worker.await??)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(CreateFigures {
        devices: total,
        seconds,
        devices_per_second: total as f64 / seconds,
        step: "CreateDevice request".into(),
        latency: latency(&histogram),
    })
}

fn report_progress(what: &str, done: usize, total: usize) {
    let step = (total / 10).max(1);
    if done.is_multiple_of(step) {
        eprintln!("{what} {done}/{total}");
    }
}

async fn run_store(
    args: &RegistryBenchArgs,
    location: LocationName,
    registry_id: RegistryId,
) -> Result<Report> {
    let dir = args
        .data_dir
        .as_deref()
        .context("--store needs --data-dir")?;
    // Holding the data dir's lock keeps a server off the file while the bench writes to it.
    let data_dir = DataDir::open(dir)?;
    let registry = location.registry(registry_id.clone());
    let t = Instant::now();
    let service = open_service(&data_dir.registry_path())?;
    let open_ms = millis(t.elapsed());

    let create = if args.lookups_only {
        None
    } else {
        let new_registry = Registry {
            project: location.project.clone(),
            location: location.location.clone(),
            id: registry_id,
            event_notification_configs: Vec::new(),
            state_notification_topic: String::new(),
            mqtt_state: Default::default(),
            http_state: Default::default(),
            log_level: Default::default(),
            credentials: Vec::new(),
        };
        service
            .create_registry(&location, new_registry)
            .await
            .with_context(|| format!("cannot create registry {registry}"))?;
        Some(create_devices_store(&service, &registry, args).await?)
    };
    let target = Target::Store {
        service,
        registry: registry.clone(),
    };
    let (first_lookup_ms, lookups) = measure_lookups(target, args).await?;

    // Every clone of the service is gone now, so the store is closed and can be reopened.
    let data_dir_size = dir_size(data_dir.path())?;
    let t = Instant::now();
    let service = open_service(&data_dir.registry_path())?;
    let reopen_open = t.elapsed();
    let t = Instant::now();
    let device = random_device(&mut StdRng::from_rng(&mut rand::rng()), args.devices);
    let mut target = Target::Store {
        service,
        registry: registry.clone(),
    };
    target.get_device(&device).await?;
    let reopen = Startup {
        open_ms: millis(reopen_open),
        first_lookup_ms: millis(t.elapsed()),
    };
    Ok(Report {
        mode: "store",
        registry: registry.to_string(),
        devices: args.devices,
        concurrency: args.concurrency,
        batch: Some(args.batch),
        open_ms: Some(open_ms),
        create,
        first_lookup_ms,
        lookups,
        data_dir: Some(data_dir_size),
        reopen: Some(reopen),
    })
}

fn open_service(path: &Path) -> Result<RegistryService> {
    let store = EmbeddedRegistryStore::open(path)
        .with_context(|| format!("cannot open the registry store {}", path.display()))?;
    Ok(RegistryService::new(
        Arc::new(store),
        Arc::new(SystemClock),
        RegistryServiceOptions::default(),
    ))
}

fn random_device(rng: &mut StdRng, devices: usize) -> DeviceRef {
    DeviceRef::Id(device_id(rng.random_range(0..devices)))
}

/// `--batch` devices per `create_devices` call, so one transaction (and one fsync) per batch.
async fn create_devices_store(
    service: &RegistryService,
    registry: &RegistryName,
    args: &RegistryBenchArgs,
) -> Result<CreateFigures> {
    let keys = device_keys()?;
    let mut histogram = new_histogram();
    let started = Instant::now();
    let mut done = 0;
    while done < args.devices {
        let end = (done + args.batch).min(args.devices);
        let devices = (done..end)
            .map(|i| {
                let mut device = Device::new(device_id(i), 0);
                device.credentials.push(DeviceCredential {
                    format: PublicKeyFormat::Es256Pem,
                    key: keys[i % keys.len()].clone(),
                    expiration_time: None,
                });
                device
            })
            .collect::<Vec<_>>();
        let t = Instant::now();
        service
            .create_devices(registry, devices)
            .await
            .with_context(|| format!("cannot create devices {done}..{end}"))?;
        record(&mut histogram, t.elapsed());
        done = end;
        if done % (args.devices / 10).max(1) < args.batch || done == args.devices {
            eprintln!("created {done}/{}", args.devices);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(CreateFigures {
        devices: args.devices,
        seconds,
        devices_per_second: args.devices as f64 / seconds,
        step: format!("batch of {}", args.batch),
        latency: latency(&histogram),
    })
}

/// Times the first lookup, then four rounds over one random sample of devices: by string id
/// sequentially (which also learns their numeric ids), by numeric id sequentially, then both
/// again at `--concurrency`. Only the first round can meet pages that are not cached yet.
async fn measure_lookups(
    target: Target,
    args: &RegistryBenchArgs,
) -> Result<(f64, Vec<LookupFigures>)> {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let t = Instant::now();
    target
        .clone()
        .get_device(&random_device(&mut rng, args.devices))
        .await
        .context("the first lookup failed; does the registry hold --devices bench devices?")?;
    let first_lookup_ms = millis(t.elapsed());
    if args.lookups == 0 {
        return Ok((first_lookup_ms, Vec::new()));
    }
    let mut by_id: Vec<DeviceRef> = (0..args.lookups)
        .map(|_| random_device(&mut rng, args.devices))
        .collect();
    let (figures, num_ids) = lookup_round("id", &target, by_id.clone(), 1).await?;
    let mut by_num_id: Vec<DeviceRef> = num_ids.into_iter().map(DeviceRef::NumId).collect();
    by_num_id.shuffle(&mut rng);
    let mut out = vec![figures];
    out.push(
        lookup_round("numId", &target, by_num_id.clone(), 1)
            .await?
            .0,
    );
    if args.concurrency > 1 {
        by_id.shuffle(&mut rng);
        by_num_id.shuffle(&mut rng);
        for (by, refs) in [("id", by_id), ("numId", by_num_id)] {
            out.push(lookup_round(by, &target, refs, args.concurrency).await?.0);
        }
    }
    Ok((first_lookup_ms, out))
}

/// Looks up every device of `refs` with `concurrency` workers; returns the figures and the
/// numeric ids found, in the order of `refs`.
async fn lookup_round(
    by: &'static str,
    target: &Target,
    refs: Vec<DeviceRef>,
    concurrency: usize,
) -> Result<(LookupFigures, Vec<u64>)> {
    let refs = Arc::new(refs);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut target, refs, next) = (target.clone(), refs.clone(), next.clone());
            tokio::spawn(async move {
                let mut histogram = new_histogram();
                let mut found = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(device) = refs.get(i) else {
                        return Ok::<_, anyhow::Error>((histogram, found));
                    };
                    let t = Instant::now();
                    let num_id = target.get_device(device).await?;
                    record(&mut histogram, t.elapsed());
                    found.push((i, num_id));
                }
            })
        })
        .collect();
    let mut histogram = new_histogram();
    let mut num_ids = vec![0; refs.len()];
    for worker in workers {
        let (h, found) = worker.await??;
        histogram.add(h)?;
        for (i, num_id) in found {
            num_ids[i] = num_id;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let figures = LookupFigures {
        by,
        concurrency,
        count: refs.len(),
        per_second: refs.len() as f64 / seconds,
        latency: latency(&histogram),
    };
    Ok((figures, num_ids))
}

/// Sums the files under `dir`: blocks allocated on disk and lengths.
fn dir_size(dir: &Path) -> Result<DirSize> {
    use std::os::unix::fs::MetadataExt;
    let mut size = DirSize {
        disk_bytes: 0,
        apparent_bytes: 0,
    };
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        for entry in
            std::fs::read_dir(&path).with_context(|| format!("cannot list {}", path.display()))?
        {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                size.disk_bytes += meta.blocks() * 512;
                size.apparent_bytes += meta.len();
            }
        }
    }
    Ok(size)
}

fn fmt_micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{:.1} s", us / 1e6)
    }
}

fn fmt_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn print_table(r: &Report) {
    let how = match r.batch {
        Some(batch) => format!("batches of {batch}, lookup concurrency {}", r.concurrency),
        None => format!("concurrency {}", r.concurrency),
    };
    println!(
        "perch bench registry --{}: {} devices in {} ({how})",
        r.mode, r.devices, r.registry
    );
    if let Some(ms) = r.open_ms {
        println!("  open store      {}", fmt_micros(ms * 1e3));
    }
    if let Some(c) = &r.create {
        println!(
            "  create          {} devices in {:.2} s = {:.0} devices/s",
            c.devices, c.seconds, c.devices_per_second
        );
        println!(
            "                  per {}: p50 {}, p99 {}, max {}",
            c.step,
            fmt_micros(c.latency.p50_us as f64),
            fmt_micros(c.latency.p99_us as f64),
            fmt_micros(c.latency.max_us as f64)
        );
    }
    println!("  first lookup    {}", fmt_micros(r.first_lookup_ms * 1e3));
    if !r.lookups.is_empty() {
        println!(
            "  lookups         {:<6} {:>5} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "by", "conc", "count", "per s", "p50", "p99", "max"
        );
        for l in &r.lookups {
            println!(
                "                  {:<6} {:>5} {:>7} {:>9.0} {:>9} {:>9} {:>9}",
                l.by,
                l.concurrency,
                l.count,
                l.per_second,
                fmt_micros(l.latency.p50_us as f64),
                fmt_micros(l.latency.p99_us as f64),
                fmt_micros(l.latency.max_us as f64)
            );
        }
    }
    if let Some(d) = &r.data_dir {
        println!(
            "  data dir        {} on disk ({} apparent)",
            fmt_mib(d.disk_bytes),
            fmt_mib(d.apparent_bytes)
        );
    }
    if let Some(s) = &r.reopen {
        println!(
            "  reopen          open {} + first lookup {}",
            fmt_micros(s.open_ms * 1e3),
            fmt_micros(s.first_lookup_ms * 1e3)
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: RegistryBenchArgs,
    }

    fn parse(flags: &[&str]) -> Result<RegistryBenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(flags.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn exactly_one_mode_is_required_and_store_needs_a_data_dir() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--api", "--store", "--data-dir", "d"]).is_err());
        assert!(parse(&["--store"]).is_err());
        assert!(parse(&["--api", "--lookups-only"]).is_err());
        assert!(parse(&["--store", "--data-dir", "d"]).is_ok());
        assert!(parse(&["--api", "--lookups-only", "--registry", "r1x"]).is_ok());
    }

    #[tokio::test]
    async fn store_mode_creates_devices_then_finds_them_again_after_reopening() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_str().unwrap();
        let flags = [
            "--store",
            "--data-dir",
            dir,
            "--devices",
            "50",
            "--batch",
            "20",
        ];
        let mut args = parse(&flags).unwrap();
        args.lookups = 30;
        args.concurrency = 3;
        let location = LocationName {
            project: "p".into(),
            location: "l".into(),
        };
        let id: RegistryId = "bench-test".parse().unwrap();
        let report = run_store(&args, location.clone(), id.clone())
            .await
            .unwrap();
        assert_eq!(report.create.unwrap().devices, 50);
        assert_eq!(report.lookups.len(), 4);
        assert!(report.lookups.iter().all(|l| l.count == 30));
        assert!(report.data_dir.unwrap().apparent_bytes > 0);

        args.lookups_only = true;
        let again = run_store(&args, location, id).await.unwrap();
        assert!(again.create.is_none());
        assert_eq!(again.lookups.len(), 4);
    }
}
