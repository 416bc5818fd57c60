//! The Perch side of `perch bench pubsub`: gRPC Publish batches, a StreamingPull consumer that
//! acks on the stream, and the three phases run against one server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use pb::publisher_client::PublisherClient;
use pb::subscriber_client::SubscriberClient;
use perch::datadir::read_endpoints;
use perch_proto::pubsub as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::procfs::{find_listener_pid, rss_bytes};
use super::{
    Consumed, Meter, Phase, PubsubBenchArgs, SystemReport, Tally, await_consumer, end_to_end,
    join_workers, memory, run_id, stamped_payload,
};
use crate::measure::{micros, new_histogram};

// ----- Perch -----

pub(super) async fn perch_channel(args: &PubsubBenchArgs) -> Result<(Channel, String)> {
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

pub(super) async fn run_perch(args: &PubsubBenchArgs) -> Result<SystemReport> {
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
pub(super) async fn perch_publish(
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
pub(super) async fn perch_consume(
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
