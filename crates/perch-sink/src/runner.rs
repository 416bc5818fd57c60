//! Runs the sink: finds its subscriptions and keeps one puller per subscription, each writing
//! a pulled batch to the store and acknowledging it only once the batch is committed.
//!
//! At-least-once end to end: a crash between commit and ack redelivers the batch, and the store
//! ignores what it already holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use perch_core::ErrorCode;
use perch_core::clock::{Clock, SystemClock};
use perch_pubsub::PubsubService;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::{Row, TelemetryStore};

/// Subscriptions whose id starts with this feed the sink (`perch telemetry sink create`).
pub const SINK_SUBSCRIPTION_PREFIX: &str = "perch-sink-";
/// How often new sink subscriptions are looked for.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// Messages one pull asks for (one store transaction).
const PULL_BATCH: usize = 1_000;
/// Pause after a failed pull or write before trying again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How often rows past the retention period are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);

/// The sink of one server.
#[derive(Debug, Clone)]
pub struct Sink {
    pubsub: PubsubService,
    store: TelemetryStore,
    /// Rows older than this are deleted (None: kept forever).
    retention: Option<Duration>,
    /// What "older" is measured from.
    clock: Arc<dyn Clock>,
}

impl Sink {
    pub fn new(pubsub: PubsubService, store: TelemetryStore) -> Sink {
        Sink {
            pubsub,
            store,
            retention: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// Measures retention from `clock` (the system clock by default).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Sink {
        self.clock = clock;
        self
    }

    /// Deletes telemetry and anomalies older than `retention`, at start and every hour.
    pub fn with_retention(mut self, retention: Option<Duration>) -> Sink {
        self.retention = retention;
        self
    }

    fn spawn_purge(&self) {
        let Some(retention) = self.retention else {
            return;
        };
        let Ok(age) = chrono::Duration::from_std(retention) else {
            return;
        };
        let store = self.store.clone();
        let cutoff = self.clock.now() - age;
        tokio::task::spawn_blocking(move || match store.purge_before(cutoff) {
            Ok(p) if p == Default::default() => {}
            Ok(p) => tracing::info!(
                rows = p.rows,
                series = p.series,
                "telemetry past its retention deleted"
            ),
            Err(e) => tracing::warn!(error = %e, "telemetry retention failed; will retry"),
        });
    }

    pub fn store(&self) -> &TelemetryStore {
        &self.store
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut pullers: HashMap<String, JoinHandle<()>> = HashMap::new();
        let mut stop = shutdown.clone();
        let mut purged = tokio::time::Instant::now();
        self.spawn_purge();
        loop {
            if purged.elapsed() >= PURGE_INTERVAL {
                purged = tokio::time::Instant::now();
                self.spawn_purge();
            }
            pullers.retain(|_, task| !task.is_finished());
            for name in self.pubsub.subscription_names() {
                let is_sink = name
                    .rsplit('/')
                    .next()
                    .is_some_and(|id| id.starts_with(SINK_SUBSCRIPTION_PREFIX));
                let active = || {
                    self.pubsub
                        .get_subscription(&name)
                        .is_ok_and(|c| !c.detached)
                };
                if is_sink && !pullers.contains_key(&name) && active() {
                    tracing::info!(subscription = %name, "telemetry sink following");
                    let task = tokio::spawn(self.clone().follow(name.clone(), shutdown.clone()));
                    pullers.insert(name, task);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(DISCOVERY_INTERVAL) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        for (_, task) in pullers {
            let _ = task.await;
        }
    }

    /// Pulls one subscription until it is deleted or the server stops.
    async fn follow(self, name: String, mut shutdown: watch::Receiver<bool>) {
        loop {
            let pulled = tokio::select! {
                r = self.pubsub.pull(&name, PULL_BATCH, false, None) => r,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let deliveries = match pulled {
                Ok(d) => d,
                // Deleted, or detached from its topic: nothing more will come.
                Err(e)
                    if matches!(
                        e.code(),
                        ErrorCode::NotFound | ErrorCode::FailedPrecondition
                    ) =>
                {
                    tracing::info!(subscription = %name, reason = %e, "telemetry sink stops following");
                    return;
                }
                Err(e) => {
                    tracing::warn!(subscription = %name, error = %e, "telemetry sink cannot pull");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            if deliveries.is_empty() {
                continue;
            }
            let (project, topic) = match self.pubsub.get_subscription(&name) {
                Ok(c) => (project_of(&name).to_owned(), c.topic),
                Err(_) => return,
            };
            let ack_ids: Vec<String> = deliveries.iter().map(|d| d.ack_id.clone()).collect();
            let rows: Vec<Row> = deliveries
                .into_iter()
                .map(|d| Row {
                    subscription: name.clone(),
                    message_id: d.message.seq,
                    project: project.clone(),
                    topic: topic.clone(),
                    publish_time: d.message.publish_time,
                    attributes: d.message.message.attributes,
                    data: d.message.message.data.to_vec(),
                })
                .collect();
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.insert(&rows)).await {
                Ok(Ok(_)) => {
                    if let Err(e) = self.pubsub.acknowledge(&name, &ack_ids) {
                        // Redelivered later and ignored by the store: nothing is lost.
                        tracing::warn!(subscription = %name, error = %e, "telemetry sink cannot acknowledge");
                    }
                }
                Ok(Err(e)) => {
                    // Not acknowledged: the messages come back after their ack deadline.
                    tracing::error!(subscription = %name, error = %e, "telemetry sink cannot write; will retry");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => {
                    tracing::error!(subscription = %name, error = %e, "telemetry sink writer failed");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
}

/// `P` of `projects/P/subscriptions/S`.
fn project_of(name: &str) -> &str {
    name.split('/').nth(1).unwrap_or_default()
}
