//! `perch bench pubsub`: Perch's Pub/Sub side by side with NATS JetStream on the same machine,
//! in one run, with the same messages and the same concurrency (issue: "at least 1.0×
//! JetStream's publish throughput at equal durability").
//!
//! Three phases per system, in this order:
//! 1. **publish**: `--messages` messages of `--size` bytes from `--publishers` tasks. A Perch
//!    task sends `Publish` requests of `--batch` messages; a JetStream task keeps up to
//!    `--batch` publishes in flight, awaiting each ack. Either way at most P × B messages wait
//!    for their ack, and every latency is one message's publish → ack.
//! 2. **end to end**: a consumer (StreamingPull acking on the stream; a JetStream pull consumer
//!    acking each message) runs while the same load is published again. Payloads carry their
//!    send time, so the consumer records publish → receive latency.
//! 3. **backlog memory**: `--backlog` messages into a topic/stream whose subscription/consumer
//!    nobody reads, then the server's resident memory (VmRSS).
//!
//! Each phase also reports the CPU the server and this client used, since both share the
//! machine's cores. Servers are found by the port they listen on (or `--perch-pid`).
//!
//! Does not own starting servers or choosing their durability: JetStream acknowledges after
//! fsync only if its server is configured so; `docs/benchmarks.md` says how each was run.

mod jetstream_system;
mod output;
mod perch_system;
mod procfs;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use perch::cli::Format;
use perch_core::{Clock, SystemClock};
use perch_pubsub::service::PUBLISH_MAX_MESSAGES;
use serde::Serialize;

use crate::measure::{new_histogram, run_name};
use jetstream_system::run_jetstream;
use output::print_table;
use perch_system::run_perch;
use procfs::{Cpu, rss_bytes};

/// Bytes every payload starts with: its send time (µs since the Unix epoch) and its index.
const STAMP_BYTES: usize = 16;
/// How long one phase may take before the bench gives up (bounded load, never a hang).
const PHASE_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the servers idle before the second memory reading.
const SETTLE: Duration = Duration::from_secs(5);

/// `perch bench pubsub`
#[derive(Debug, Args)]
pub struct PubsubBenchArgs {
    /// gRPC address of a running `perch serve --dev`, HOST:PORT (default: from --data-dir)
    #[arg(long)]
    perch: Option<String>,
    /// The Perch server's data dir, to read endpoints.json
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Pid of the Perch server (default: the process listening on its gRPC port)
    #[arg(long)]
    perch_pid: Option<u32>,
    /// NATS server with JetStream; repeat to compare several (e.g. with and without fsync)
    #[arg(long = "nats", default_value = "nats://127.0.0.1:4222")]
    nats: Vec<String>,
    /// Measure Perch alone
    #[arg(long, conflicts_with = "nats")]
    no_nats: bool,
    /// Messages per phase (publish, and again end to end)
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Bytes per message (at least 16: send time and index)
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Concurrent publishing tasks
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Messages per Publish request (Perch); publishes in flight per task (JetStream)
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Connections the publishing tasks share, round-robin (one each side by default, as one
    /// client process would use)
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Unread messages for the memory reading; 0 skips that phase
    #[arg(long, default_value_t = 1_000_000)]
    backlog: usize,
    /// Flow control of the end-to-end consumers: messages delivered but not yet acked
    #[arg(long, default_value_t = 10_000)]
    max_outstanding: usize,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Clone, Serialize)]
struct Latency {
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

/// One timed stream of messages.
#[derive(Debug, Clone, Serialize)]
struct Phase {
    messages: usize,
    seconds: f64,
    msgs_per_s: f64,
    mb_per_s: f64,
    latency: Latency,
    /// CPU time over wall time, in percent of one core (the machine may have several).
    server_cpu_pct: Option<f64>,
    client_cpu_pct: Option<f64>,
}

#[derive(Debug, Serialize)]
struct EndToEnd {
    /// Received, per second from the first publish to the last new message.
    received: Phase,
    /// The publishing that ran meanwhile.
    publish: Phase,
    /// Deliveries of a message already received (redeliveries).
    duplicates: usize,
}

#[derive(Debug, Serialize)]
struct Memory {
    backlog: usize,
    rss_before_bytes: Option<u64>,
    rss_after_bytes: Option<u64>,
    rss_settled_bytes: Option<u64>,
    publish: Phase,
}

#[derive(Debug, Serialize)]
struct SystemReport {
    system: &'static str,
    endpoint: String,
    /// The server process, when it could be found (CPU and memory need it).
    pid: Option<u32>,
    publish: Phase,
    end_to_end: EndToEnd,
    memory: Option<Memory>,
}

#[derive(Debug, Serialize)]
struct Report {
    messages: usize,
    size: usize,
    publishers: usize,
    batch: usize,
    systems: Vec<SystemReport>,
}

fn latency(h: &Histogram<u64>) -> Latency {
    Latency {
        p50_us: h.value_at_quantile(0.50),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
    }
}

/// Microseconds since the Unix epoch (at least 1), the send time payloads carry.
fn unix_micros() -> u64 {
    u64::try_from(SystemClock.now().timestamp_micros()).map_or(1, |us| us.max(1))
}

/// A payload of `size` bytes stamped with the current time and `index`.
fn stamped_payload(size: usize, index: u64) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(STAMP_BYTES)];
    p[..8].copy_from_slice(&unix_micros().to_le_bytes());
    p[8..16].copy_from_slice(&index.to_le_bytes());
    p
}

/// The send time (µs since the epoch) and index a payload carries.
fn read_stamp(p: &[u8]) -> Option<(u64, u64)> {
    let sent = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    let index = u64::from_le_bytes(p.get(8..16)?.try_into().ok()?);
    Some((sent, index))
}

/// Measures a phase: wall time, and the CPU of the server and of this process over it.
struct Meter {
    started: Instant,
    server: Cpu,
    client: Cpu,
}

impl Meter {
    fn start(server_pid: Option<u32>) -> Meter {
        Meter {
            started: Instant::now(),
            server: Cpu::of(server_pid),
            client: Cpu::of_self(),
        }
    }

    fn finish(&self, messages: usize, size: usize, h: &Histogram<u64>, seconds: f64) -> Phase {
        Phase {
            messages,
            seconds,
            msgs_per_s: messages as f64 / seconds,
            mb_per_s: (messages * size) as f64 / seconds / 1e6,
            latency: latency(h),
            server_cpu_pct: self.server.percent_since(self.started),
            client_cpu_pct: self.client.percent_since(self.started),
        }
    }
}

/// What a consumer saw: first receipts' latencies, when the last new message came, duplicates.
struct Consumed {
    histogram: Histogram<u64>,
    last_new: Instant,
    duplicates: usize,
}

/// Counts first receipts of indices `0..total` and records their publish → receive latency.
struct Tally {
    seen: Vec<bool>,
    unique: usize,
    consumed: Consumed,
}

impl Tally {
    fn new(total: usize) -> Tally {
        Tally {
            seen: vec![false; total],
            unique: 0,
            consumed: Consumed {
                histogram: new_histogram(),
                last_new: Instant::now(),
                duplicates: 0,
            },
        }
    }

    fn receive(&mut self, payload: &[u8]) -> Result<()> {
        let (sent, index) = read_stamp(payload).context("a message without the bench stamp")?;
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| self.seen.get_mut(i))
            .context("a message index out of range: is another publisher on the topic?")?;
        if std::mem::replace(slot, true) {
            self.consumed.duplicates += 1;
            return Ok(());
        }
        self.unique += 1;
        self.consumed.last_new = Instant::now();
        let waited = unix_micros().saturating_sub(sent).max(1);
        self.consumed.histogram.saturating_record(waited);
        Ok(())
    }

    fn is_complete(&self) -> bool {
        self.unique == self.seen.len()
    }
}

pub async fn run(args: PubsubBenchArgs) -> Result<()> {
    if args.messages == 0 || args.publishers == 0 || args.batch == 0 || args.connections == 0 {
        bail!("--messages, --publishers, --batch and --connections must be at least 1");
    }
    if args.batch > PUBLISH_MAX_MESSAGES {
        bail!(
            "--batch {} is over the {PUBLISH_MAX_MESSAGES} messages a Publish request may carry",
            args.batch
        );
    }
    if args.size < STAMP_BYTES {
        bail!("--size must be at least {STAMP_BYTES} bytes (send time and index)");
    }
    let mut systems = vec![run_perch(&args).await?];
    for url in args.nats.iter().filter(|_| !args.no_nats) {
        systems.push(run_jetstream(&args, url).await?);
    }
    let report = Report {
        messages: args.messages,
        size: args.size,
        publishers: args.publishers,
        batch: args.batch,
        systems,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print_table(&report),
    }
    Ok(())
}

/// A name unique to this run, for topics, subscriptions and streams.
fn run_id() -> String {
    run_name(&SystemClock)
}

/// Waits for every worker and merges their histograms.
async fn join_workers(
    workers: Vec<tokio::task::JoinHandle<Result<Histogram<u64>>>>,
) -> Result<Histogram<u64>> {
    let mut merged = new_histogram();
    for worker in workers {
        merged.add(worker.await.context("a publishing task panicked")??)?;
    }
    Ok(merged)
}

/// Runs a consumer task to completion within `PHASE_TIMEOUT`.
async fn await_consumer(
    consumer: tokio::task::JoinHandle<Result<Consumed>>,
    what: &str,
) -> Result<Consumed> {
    tokio::time::timeout(PHASE_TIMEOUT, consumer)
        .await
        .with_context(|| format!("{what}: not every message arrived within {PHASE_TIMEOUT:?}"))?
        .context("the consumer task panicked")?
}

fn end_to_end(
    meter: &Meter,
    consumed: Consumed,
    publish: Phase,
    args: &PubsubBenchArgs,
) -> EndToEnd {
    let seconds = consumed
        .last_new
        .saturating_duration_since(meter.started)
        .as_secs_f64();
    EndToEnd {
        received: meter.finish(args.messages, args.size, &consumed.histogram, seconds),
        publish,
        duplicates: consumed.duplicates,
    }
}

async fn memory(backlog: usize, pid: Option<u32>, before: Option<u64>, publish: Phase) -> Memory {
    let after = pid.and_then(rss_bytes);
    tokio::time::sleep(SETTLE).await;
    Memory {
        backlog,
        rss_before_bytes: before,
        rss_after_bytes: after,
        rss_settled_bytes: pid.and_then(rss_bytes),
        publish,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::procfs::{find_listener_pid, parse_cpu_ticks, parse_listener};
    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: PubsubBenchArgs,
    }

    fn parse(flags: &[&str]) -> PubsubBenchArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn payloads_carry_their_send_time_and_index_and_duplicates_are_counted_once() {
        let p = stamped_payload(256, 3);
        assert_eq!(p.len(), 256);
        let (sent, index) = read_stamp(&p).unwrap();
        assert_eq!(index, 3);
        assert!(sent <= unix_micros());
        let mut tally = Tally::new(4);
        for i in [3, 0, 3, 1, 2] {
            tally.receive(&stamped_payload(16, i)).unwrap();
        }
        assert!(tally.is_complete());
        assert_eq!(tally.consumed.duplicates, 1);
        assert_eq!(tally.consumed.histogram.len(), 4);
        assert!(tally.receive(&stamped_payload(16, 9)).is_err());
        assert!(tally.receive(b"short").is_err());
    }

    #[test]
    fn proc_lines_are_parsed() {
        let listen = "   1: 0100007F:107E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_listener(listen), Some((4222, 31337)));
        let established = listen.replace(" 0A ", " 01 ");
        assert_eq!(parse_listener(&established), None);
        let stat = "42 (nats server) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }

    #[tokio::test]
    async fn a_listening_socket_leads_to_this_process() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert_eq!(find_listener_pid(&addr), Some(std::process::id()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_perch_phase_runs_against_a_real_server() {
        // As `main` does: the server's HTTP clients need a TLS provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = perch::datadir::DataDir::open(tmp.path()).unwrap();
        let listeners = perch::Listeners {
            admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            mqtt: None,
            mqtt_plain: None,
            device_http: None,
        };
        let grpc = listeners.grpc.local_addr().unwrap().to_string();
        let config = perch::ServeConfig {
            data_dir: tmp.path().to_owned(),
            dev: true,
            tls_cert: None,
            tls_key: None,
            tls_sans: Vec::new(),
            insecure_admin: false,
            bridge: Default::default(),
            telemetry_retention: None,
            provisioning: Default::default(),
            log_segment_max_bytes: perch_store::embedded::SEGMENT_MAX_BYTES,
            http: Default::default(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(perch::serve(config, data_dir, listeners, async {
            let _ = stopped.await;
        }));
        let args = parse(&[
            "--perch",
            &grpc,
            "--messages",
            "300",
            "--publishers",
            "3",
            "--batch",
            "7",
            "--backlog",
            "50",
            "--max-outstanding",
            "40",
        ]);
        let report = run_perch(&args).await.unwrap();
        assert_eq!(report.pid, Some(std::process::id()));
        assert_eq!(report.publish.messages, 300);
        assert_eq!(report.end_to_end.received.messages, 300);
        let memory = report.memory.unwrap();
        assert!(memory.rss_after_bytes.unwrap() > 0);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_jetstream_phase_runs_when_a_local_nats_is_up() {
        let url = "nats://127.0.0.1:4222";
        if tokio::net::TcpStream::connect("127.0.0.1:4222")
            .await
            .is_err()
        {
            eprintln!("skipped: no NATS server on {url}");
            return;
        }
        let args = parse(&[
            "--messages",
            "200",
            "--publishers",
            "2",
            "--batch",
            "5",
            "--backlog",
            "20",
        ]);
        let report = run_jetstream(&args, url).await.unwrap();
        assert_eq!(report.end_to_end.received.messages, 200);
        assert_eq!(report.memory.unwrap().backlog, 20);
    }
}
