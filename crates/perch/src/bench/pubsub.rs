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

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use clap::Args;
use futures::StreamExt;
use hdrhistogram::Histogram;
use pb::publisher_client::PublisherClient;
use pb::subscriber_client::SubscriberClient;
use perch_proto::pubsub as pb;
use perch_pubsub::service::PUBLISH_MAX_MESSAGES;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::cli::Format;
use crate::datadir::read_endpoints;

/// Latencies are recorded in microseconds up to this bound (one hour).
const LATENCY_MAX_MICROS: u64 = 3_600_000_000;
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

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, 3).expect("the bounds are valid constants")
}

fn latency(h: &Histogram<u64>) -> Latency {
    Latency {
        p50_us: h.value_at_quantile(0.50),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(micros)
        .unwrap_or(1)
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
    format!("bench-{}", chrono::Utc::now().timestamp_millis())
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

// ----- Perch -----

async fn perch_channel(args: &PubsubBenchArgs) -> Result<(Channel, String)> {
    let endpoint = match (&args.perch, &args.data_dir) {
        (Some(e), _) => e.clone(),
        (None, Some(dir)) => read_endpoints(dir)?.grpc,
        (None, None) => bail!("name the Perch server with --perch HOST:PORT or its --data-dir"),
    };
    let addr = endpoint.trim_start_matches("http://").to_owned();
    let url = format!("http://{addr}");
    let channel = Channel::from_shared(url.clone())
        .with_context(|| format!("`{url}` is not a valid endpoint"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}; is `perch serve --dev` running?"))?;
    Ok((channel, addr))
}

async fn run_perch(args: &PubsubBenchArgs) -> Result<SystemReport> {
    let (channel, addr) = perch_channel(args).await?;
    let pid = args.perch_pid.or_else(|| find_listener_pid(&addr));
    let mut publishers = vec![PublisherClient::new(channel.clone())];
    for _ in 1..args.connections {
        publishers.push(PublisherClient::new(perch_channel(args).await?.0));
    }
    let publisher = &publishers[0];
    let mut admin = SubscriberClient::new(channel.clone());
    let id = run_id();
    let topic = |suffix: &str| format!("projects/bench/topics/{id}{suffix}");
    let subscription = |suffix: &str| format!("projects/bench/subscriptions/{id}{suffix}");
    let create = |name: String, topic: String| pb::Subscription {
        name,
        topic,
        ack_deadline_seconds: 60,
        ..Default::default()
    };
    publisher
        .clone()
        .create_topic(pb::Topic {
            name: topic(""),
            ..Default::default()
        })
        .await
        .context(
            "CreateTopic failed (an admin token is needed unless the server runs with --dev)",
        )?;

    eprintln!("perch: publish {} messages", args.messages);
    let publish = perch_publish(&publishers, &topic(""), args.messages, args, pid).await?;

    eprintln!("perch: end to end, {} messages", args.messages);
    admin
        .create_subscription(create(subscription("-e2e"), topic("")))
        .await
        .context("CreateSubscription failed")?;
    // The consumer gets its own connection, as a separate subscriber process would have.
    let (consumer_channel, _) = perch_channel(args).await?;
    let meter = Meter::start(pid);
    let consumer = tokio::spawn(perch_consume(
        consumer_channel,
        subscription("-e2e"),
        args.messages,
        args.max_outstanding,
    ));
    let e2e_publish = perch_publish(&publishers, &topic(""), args.messages, args, pid).await?;
    let consumed = await_consumer(consumer, "perch end to end").await?;
    let end_to_end = end_to_end(&meter, consumed, e2e_publish, args);

    let memory = if args.backlog > 0 {
        eprintln!("perch: backlog of {} unread messages", args.backlog);
        publisher
            .clone()
            .create_topic(pb::Topic {
                name: topic("-backlog"),
                ..Default::default()
            })
            .await
            .context("CreateTopic failed")?;
        admin
            .create_subscription(create(subscription("-backlog"), topic("-backlog")))
            .await
            .context("CreateSubscription failed")?;
        let before = pid.and_then(rss_bytes);
        let publish =
            perch_publish(&publishers, &topic("-backlog"), args.backlog, args, pid).await?;
        Some(memory(args.backlog, pid, before, publish).await)
    } else {
        None
    };

    // Best effort: a failed cleanup leaves bench topics behind, nothing worse.
    for s in ["-e2e", "-backlog"] {
        let _ = admin
            .delete_subscription(pb::DeleteSubscriptionRequest {
                subscription: subscription(s),
            })
            .await;
    }
    for t in ["", "-backlog"] {
        let _ = publisher
            .clone()
            .delete_topic(pb::DeleteTopicRequest { topic: topic(t) })
            .await;
    }
    Ok(SystemReport {
        system: "perch",
        endpoint: addr,
        pid,
        publish,
        end_to_end,
        memory,
    })
}

/// `total` messages in Publish requests of `--batch`, from `--publishers` tasks.
async fn perch_publish(
    clients: &[PublisherClient<Channel>],
    topic: &str,
    total: usize,
    args: &PubsubBenchArgs,
    pid: Option<u32>,
) -> Result<Phase> {
    let next = Arc::new(AtomicUsize::new(0));
    let (batch, size) = (args.batch, args.size);
    let meter = Meter::start(pid);
    let workers = (0..args.publishers)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let (next, topic) = (next.clone(), topic.to_owned());
            tokio::spawn(async move {
                let mut histogram = new_histogram();
                loop {
                    let start = next.fetch_add(batch, Ordering::Relaxed);
                    if start >= total {
                        return Ok(histogram);
                    }
                    let end = (start + batch).min(total);
                    let messages = (start..end)
                        .map(|i| pb::PubsubMessage {
                            data: stamped_payload(size, i as u64),
                            ..Default::default()
                        })
                        .collect();
                    let t = Instant::now();
                    client
                        .publish(pb::PublishRequest {
                            topic: topic.clone(),
                            messages,
                        })
                        .await
                        .context("Publish failed")?;
                    histogram.saturating_record_n(micros(t.elapsed()), (end - start) as u64);
                }
            })
        })
        .collect();
    let histogram = join_workers(workers).await?;
    Ok(meter.finish(
        total,
        size,
        &histogram,
        meter.started.elapsed().as_secs_f64(),
    ))
}

/// One StreamingPull stream that acks each response's messages on the stream, until every
/// index in `0..total` has arrived.
async fn perch_consume(
    channel: Channel,
    subscription: String,
    total: usize,
    max_outstanding: usize,
) -> Result<Consumed> {
    let mut client = SubscriberClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<pb::StreamingPullRequest>(16);
    tx.send(pb::StreamingPullRequest {
        subscription,
        stream_ack_deadline_seconds: 60,
        max_outstanding_messages: max_outstanding as i64,
        ..Default::default()
    })
    .await
    .context("the request stream closed")?;
    let mut responses = client
        .streaming_pull(ReceiverStream::new(rx))
        .await
        .context("StreamingPull failed")?
        .into_inner();
    let mut tally = Tally::new(total);
    while !tally.is_complete() {
        let response = responses
            .message()
            .await
            .context("StreamingPull failed")?
            .context("the server ended the StreamingPull stream")?;
        let mut ack_ids = Vec::with_capacity(response.received_messages.len());
        for received in response.received_messages {
            if let Some(m) = &received.message {
                tally.receive(&m.data)?;
            }
            ack_ids.push(received.ack_id);
        }
        if !ack_ids.is_empty() {
            tx.send(pb::StreamingPullRequest {
                ack_ids,
                ..Default::default()
            })
            .await
            .context("the request stream closed")?;
        }
    }
    Ok(tally.consumed)
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

// ----- JetStream -----

async fn run_jetstream(args: &PubsubBenchArgs, url: &str) -> Result<SystemReport> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))?;
    let addr = url.split("://").last().unwrap_or(url).to_owned();
    let pid = find_listener_pid(&addr);
    let js = jetstream::new(client);
    let mut publishers = vec![js.clone()];
    for _ in 1..args.connections {
        publishers.push(jetstream::new(
            async_nats::connect(url)
                .await
                .with_context(|| format!("cannot connect to NATS at {url}"))?,
        ));
    }
    let id = run_id().replace('-', "_");
    let stream_name = |suffix: &str| format!("{id}{suffix}").to_uppercase();
    let stream_config = |suffix: &str| jetstream::stream::Config {
        name: stream_name(suffix),
        subjects: vec![format!("{id}{suffix}.>")],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    let durable = |name: &str, subject: String| jetstream::consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: subject,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(60),
        max_ack_pending: args.max_outstanding as i64,
        ..Default::default()
    };
    let stream = js
        .create_stream(stream_config(""))
        .await
        .with_context(|| format!("cannot create a JetStream stream on {url}; is JetStream on?"))?;

    eprintln!("jetstream {url}: publish {} messages", args.messages);
    let publish = jetstream_publish(
        &publishers,
        format!("{id}.publish"),
        args.messages,
        args,
        pid,
    )
    .await?;

    eprintln!("jetstream {url}: end to end, {} messages", args.messages);
    stream
        .create_consumer(durable("e2e", format!("{id}.e2e")))
        .await
        .map_err(|e| anyhow::anyhow!("cannot create a JetStream consumer: {e}"))?;
    // The consumer gets its own connection, as a separate subscriber process would have.
    let consumer_js = jetstream::new(
        async_nats::connect(url)
            .await
            .with_context(|| format!("cannot connect to NATS at {url}"))?,
    );
    let consumer: jetstream::consumer::PullConsumer = consumer_js
        .get_consumer_from_stream("e2e", stream_name(""))
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the JetStream consumer: {e}"))?;
    let meter = Meter::start(pid);
    let consuming = tokio::spawn(jetstream_consume(consumer, args.messages));
    let e2e_publish =
        jetstream_publish(&publishers, format!("{id}.e2e"), args.messages, args, pid).await?;
    let consumed = await_consumer(consuming, "jetstream end to end").await?;
    let end_to_end = end_to_end(&meter, consumed, e2e_publish, args);

    let memory = if args.backlog > 0 {
        eprintln!(
            "jetstream {url}: backlog of {} unread messages",
            args.backlog
        );
        let backlog = js
            .create_stream(stream_config("_backlog"))
            .await
            .context("cannot create the backlog stream")?;
        backlog
            .create_consumer(durable("unread", String::new()))
            .await
            .map_err(|e| anyhow::anyhow!("cannot create a JetStream consumer: {e}"))?;
        let before = pid.and_then(rss_bytes);
        let subject = format!("{id}_backlog.m");
        let publish = jetstream_publish(&publishers, subject, args.backlog, args, pid).await?;
        Some(memory(args.backlog, pid, before, publish).await)
    } else {
        None
    };

    for suffix in ["", "_backlog"] {
        let _ = js.delete_stream(stream_name(suffix)).await;
    }
    Ok(SystemReport {
        system: "jetstream",
        endpoint: url.to_owned(),
        pid,
        publish,
        end_to_end,
        memory,
    })
}

/// `total` messages from `--publishers` tasks, each keeping up to `--batch` publishes waiting
/// for their ack.
async fn jetstream_publish(
    contexts: &[jetstream::Context],
    subject: String,
    total: usize,
    args: &PubsubBenchArgs,
    pid: Option<u32>,
) -> Result<Phase> {
    let next = Arc::new(AtomicUsize::new(0));
    let (window, size) = (args.batch, args.size);
    let meter = Meter::start(pid);
    let workers = (0..args.publishers)
        .map(|i| {
            let js = contexts[i % contexts.len()].clone();
            let (next, subject) = (next.clone(), subject.clone());
            tokio::spawn(async move {
                let mut histogram = new_histogram();
                let mut in_flight = VecDeque::with_capacity(window);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    if in_flight.len() == window {
                        await_ack(&mut in_flight, &mut histogram).await?;
                    }
                    let t = Instant::now();
                    let ack = js
                        .publish(subject.clone(), stamped_payload(size, i as u64).into())
                        .await
                        .context("JetStream publish failed")?;
                    in_flight.push_back((t, ack));
                }
                while !in_flight.is_empty() {
                    await_ack(&mut in_flight, &mut histogram).await?;
                }
                Ok(histogram)
            })
        })
        .collect();
    let histogram = join_workers(workers).await?;
    Ok(meter.finish(
        total,
        size,
        &histogram,
        meter.started.elapsed().as_secs_f64(),
    ))
}

async fn await_ack(
    in_flight: &mut VecDeque<(Instant, jetstream::context::PublishAckFuture)>,
    histogram: &mut Histogram<u64>,
) -> Result<()> {
    if let Some((t, ack)) = in_flight.pop_front() {
        ack.await
            .context("JetStream did not acknowledge a publish")?;
        histogram.saturating_record(micros(t.elapsed()));
    }
    Ok(())
}

/// A pull consumer that acks every message, until every index in `0..total` has arrived.
async fn jetstream_consume(
    consumer: jetstream::consumer::PullConsumer,
    total: usize,
) -> Result<Consumed> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1000)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("cannot pull from JetStream: {e}"))?;
    let mut tally = Tally::new(total);
    while !tally.is_complete() {
        let message = messages
            .next()
            .await
            .context("the JetStream pull ended")?
            .map_err(|e| anyhow::anyhow!("JetStream pull failed: {e}"))?;
        tally.receive(&message.payload)?;
        message
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("JetStream ack failed: {e}"))?;
    }
    Ok(tally.consumed)
}

// ----- processes: who listens where, their CPU and memory (Linux /proc) -----

/// USER_HZ: /proc reports CPU time in these ticks per second on every Linux architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// The port and socket inode of a listening socket in a `/proc/net/tcp{,6}` line.
fn parse_listener(line: &str) -> Option<(u16, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
    const LISTEN: &str = "0A";
    if *state != LISTEN {
        return None;
    }
    let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
    Some((port, inode.parse().ok()?))
}

/// The pid of the process listening on `addr`'s port (HOST:PORT), if this user may see it.
fn find_listener_pid(addr: &str) -> Option<u32> {
    let port = addr.parse::<SocketAddr>().ok()?.port();
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(parse_listener)
                .collect::<Vec<_>>()
        })
        .find(|(p, _)| *p == port)?
        .1;
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            std::fs::read_dir(entry.path().join("fd"))
                .ok()?
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str())
                })
                .then_some(pid)
        })
}

/// Resident memory of a process (`VmRSS`), in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU ticks from a `/proc/<pid>/stat` line.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the parenthesised command name start at field 3; utime and stime are 14, 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A process's CPU time at one instant, to compare with a later reading.
struct Cpu {
    path: Option<String>,
    ticks: Option<u64>,
}

impl Cpu {
    fn read(path: &Option<String>) -> Option<u64> {
        parse_cpu_ticks(&std::fs::read_to_string(path.as_ref()?).ok()?)
    }

    fn of(pid: Option<u32>) -> Cpu {
        let path = pid.map(|p| format!("/proc/{p}/stat"));
        Cpu {
            ticks: Cpu::read(&path),
            path,
        }
    }

    fn of_self() -> Cpu {
        let path = Some("/proc/self/stat".to_owned());
        Cpu {
            ticks: Cpu::read(&path),
            path,
        }
    }

    /// CPU used since this reading, in percent of one core over the wall time since `started`.
    fn percent_since(&self, started: Instant) -> Option<f64> {
        let used = Cpu::read(&self.path)?.checked_sub(self.ticks?)? as f64 / TICKS_PER_SECOND;
        Some(100.0 * used / started.elapsed().as_secs_f64())
    }
}

// ----- output -----

fn fmt_micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 10_000_000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{:.1} s", us as f64 / 1e6)
    }
}

fn fmt_mib(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".into(), |b| {
        format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0))
    })
}

fn fmt_pct(p: Option<f64>) -> String {
    p.map_or("n/a".into(), |p| format!("{p:.0}%"))
}

fn phase_rows(prefix: &str, phases: &[&Phase]) -> Vec<(String, Vec<String>)> {
    let row = |label: &str, f: &dyn Fn(&Phase) -> String| {
        (
            format!("{prefix}{label}"),
            phases.iter().map(|p| f(p)).collect(),
        )
    };
    vec![
        row("msgs/s", &|p| format!("{:.0}", p.msgs_per_s)),
        row("MB/s", &|p| format!("{:.1}", p.mb_per_s)),
        row("latency p50 / p99", &|p| {
            format!(
                "{} / {}",
                fmt_micros(p.latency.p50_us),
                fmt_micros(p.latency.p99_us)
            )
        }),
        row("CPU server / bench", &|p| {
            format!(
                "{} / {}",
                fmt_pct(p.server_cpu_pct),
                fmt_pct(p.client_cpu_pct)
            )
        }),
    ]
}

fn print_table(r: &Report) {
    println!(
        "perch bench pubsub: {} messages of {} B, {} publishers, batch {}",
        r.messages, r.size, r.publishers, r.batch
    );
    let header: Vec<String> = r
        .systems
        .iter()
        .map(|s| format!("{} {}", s.system, s.endpoint))
        .collect();
    let mut rows = vec![(String::new(), header)];
    let publish: Vec<&Phase> = r.systems.iter().map(|s| &s.publish).collect();
    rows.extend(phase_rows("publish ", &publish));
    let received: Vec<&Phase> = r.systems.iter().map(|s| &s.end_to_end.received).collect();
    rows.extend(phase_rows("e2e received ", &received));
    let e2e_publish: Vec<&Phase> = r.systems.iter().map(|s| &s.end_to_end.publish).collect();
    rows.extend(phase_rows("e2e publish ", &e2e_publish).into_iter().take(1));
    rows.push((
        "e2e duplicates".into(),
        r.systems
            .iter()
            .map(|s| s.end_to_end.duplicates.to_string())
            .collect(),
    ));
    if r.systems.iter().any(|s| s.memory.is_some()) {
        let cell = |f: &dyn Fn(&Memory) -> String| {
            r.systems
                .iter()
                .map(|s| s.memory.as_ref().map_or("-".into(), f))
                .collect::<Vec<_>>()
        };
        rows.push(("backlog messages".into(), cell(&|m| m.backlog.to_string())));
        rows.push((
            "backlog publish msgs/s".into(),
            cell(&|m| format!("{:.0}", m.publish.msgs_per_s)),
        ));
        rows.push((
            "RSS before backlog".into(),
            cell(&|m| fmt_mib(m.rss_before_bytes)),
        ));
        rows.push((
            "RSS after backlog".into(),
            cell(&|m| fmt_mib(m.rss_after_bytes)),
        ));
        rows.push((
            format!("RSS {}s later", SETTLE.as_secs()),
            cell(&|m| fmt_mib(m.rss_settled_bytes)),
        ));
    }
    for (label, cells) in rows {
        let cells: Vec<String> = cells.iter().map(|c| format!("{c:>34}")).collect();
        println!("{label:<32}{}", cells.join(""));
    }
    let perch = r.systems.first().map(|s| s.publish.msgs_per_s);
    for s in r.systems.iter().skip(1) {
        if let Some(p) = perch {
            println!(
                "perch / jetstream {}: publish {:.2}×, end to end {:.2}×",
                s.endpoint,
                p / s.publish.msgs_per_s,
                r.systems[0].end_to_end.received.msgs_per_s / s.end_to_end.received.msgs_per_s
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

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
        let data_dir = crate::datadir::DataDir::open(tmp.path()).unwrap();
        let listeners = crate::Listeners {
            admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            mqtt: None,
            mqtt_plain: None,
            device_http: None,
        };
        let grpc = listeners.grpc.local_addr().unwrap().to_string();
        let config = crate::ServeConfig {
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
        let server = tokio::spawn(crate::serve(config, data_dir, listeners, async {
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
