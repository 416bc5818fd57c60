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

mod api;
mod lookups;
mod output;
mod store;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use perch::cli::Format;
use perch_core::{DeviceId, LocationName, RegistryId, SystemClock};
use serde::Serialize;

use crate::measure::run_name;
use api::run_api;
use output::print_table;
use store::run_store;

/// Distinct device keys to generate; devices reuse them round-robin (key generation is not
/// what is measured, and the registry does not require keys to be unique).
const DEVICE_KEYS: usize = 8;

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

/// The bench's device names: `dev-0000000`, `dev-0000001`, …
fn device_id(i: usize) -> DeviceId {
    format!("dev-{i:07}")
        .parse()
        .expect("dev-NNNNNNN is a valid device id")
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
        None => run_name(&SystemClock),
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

fn report_progress(what: &str, done: usize, total: usize) {
    let step = (total / 10).max(1);
    if done.is_multiple_of(step) {
        eprintln!("{what} {done}/{total}");
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
