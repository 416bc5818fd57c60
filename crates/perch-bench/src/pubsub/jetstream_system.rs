//! The NATS JetStream side of `perch bench pubsub`: publishes with bounded in-flight acks, a pull
//! consumer acking each message, and the same three phases against one stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream;
use futures::StreamExt;
use hdrhistogram::Histogram;

use super::procfs::{find_listener_pid, rss_bytes};
use super::{
    Consumed, Meter, Phase, PubsubBenchArgs, SystemReport, Tally, await_consumer, end_to_end,
    join_workers, memory, run_id, stamped_payload,
};
use crate::measure::{micros, new_histogram};

// ----- JetStream -----

/// A JetStream context on a new connection to `url`.
async fn connect(url: &str) -> Result<jetstream::Context> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))?;
    Ok(jetstream::new(client))
}

pub(super) async fn run_jetstream(args: &PubsubBenchArgs, url: &str) -> Result<SystemReport> {
    let js = connect(url).await?;
    let addr = url.split("://").last().unwrap_or(url).to_owned();
    let pid = find_listener_pid(&addr);
    let mut publishers = vec![js.clone()];
    for _ in 1..args.connections {
        publishers.push(connect(url).await?);
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
    let consumer: jetstream::consumer::PullConsumer = connect(url)
        .await?
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
pub(super) async fn jetstream_publish(
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

pub(super) async fn await_ack(
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
pub(super) async fn jetstream_consume(
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
