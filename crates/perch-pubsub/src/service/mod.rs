//! The Pub/Sub service: resources (topics, subscriptions, snapshots) kept in memory and written
//! through to the `PubsubStore`; publishing into the `MessageLog`; delivery through each
//! subscription's `SubscriptionState`; background tasks that persist ack progress, apply
//! retention and run push subscriptions.
//!
//! This module owns the service struct, its limits and the helpers its parts share; each part
//! of the API lives in the submodule named for it: `topics`, `subscriptions`, `snapshots` (and
//! seek), `publish`, `delivery` (pull, ack, ack deadlines, streams, dead letters) and
//! `background` (progress flushes, retention).
//!
//! Ack progress reaches the store in numbered flushes, one at a time (`ProgressFlushes`): the
//! background loop runs one every `progress_flush_interval`, and an exactly-once acknowledgement
//! waits (`persist_acks`) for a flush that began after it was applied, so its confirmation is
//! sent only once it is on disk; waiting acks share one flush (group commit).
//!
//! Lock order: `topics` → `subscriptions` → `snapshots` → one subscription's `config` → its
//! `state`. No lock is held across an `.await`, except the async `ProgressFlushes::running`
//! around one whole flush.

mod background;
mod delivery;
mod publish;
mod snapshots;
mod subscriptions;
#[cfg(test)]
mod tests;
mod topics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use perch_core::{Clock, ErrorCode, Rejection, SystemClock};
use perch_store::log::MessageLog;
use perch_store::pubsub::{PubsubStore, ResourceKind};
use tokio::sync::{Notify, watch};

use crate::config::{SnapshotConfig, SubscriptionConfig, TopicConfig};
use crate::error::invalid;
use crate::filter::Filter;
use crate::subscription::{DeliverySettings, SubscriptionState};
use crate::{Error, Result, push};

pub use delivery::Stream;

/// Most messages in one publish request (Google).
pub const PUBLISH_MAX_MESSAGES: usize = 1000;
/// Largest publish request, in message bytes (Google: 10 MB).
pub const PUBLISH_MAX_BYTES: usize = 10 * 1000 * 1000;
/// Largest message data (Google: 10 MB).
pub const MESSAGE_MAX_BYTES: usize = 10 * 1000 * 1000;
/// Most attributes per message (Google).
pub const ATTRIBUTES_MAX: usize = 100;
/// Longest attribute key, in bytes (Google).
pub const ATTRIBUTE_KEY_MAX_BYTES: usize = 256;
/// Longest attribute value, in bytes (Google).
pub const ATTRIBUTE_VALUE_MAX_BYTES: usize = 1024;
/// Longest ordering key, in bytes (Perch choice; Google's is unverified).
pub const ORDERING_KEY_MAX_BYTES: usize = 1024;
/// Message bytes one Pull or StreamingPull response carries at most (a single larger message
/// still goes alone): Google's clients in emulator mode keep gRPC's 4 MiB receive limit.
pub const RESPONSE_MAX_BYTES: usize = 3 * 1024 * 1024 + 512 * 1024;
/// Most messages one Pull returns (Perch cap).
pub const PULL_MAX_MESSAGES: usize = 1000;
/// Ack deadline bounds and default, in seconds (Google).
pub const ACK_DEADLINE_MIN_SECONDS: i32 = 10;
pub const ACK_DEADLINE_MAX_SECONDS: i32 = 600;
pub const ACK_DEADLINE_DEFAULT_SECONDS: i32 = 10;
/// Subscription retention bounds and default (Google: 10 min to 31 days, default 7 days).
pub const RETENTION_MIN_SECONDS: i64 = 600;
pub const RETENTION_MAX_SECONDS: i64 = 31 * 24 * 3600;
pub const RETENTION_DEFAULT_SECONDS: i64 = 7 * 24 * 3600;
/// Default expiration policy TTL (31 days) and its minimum (1 day).
pub const EXPIRATION_TTL_DEFAULT_SECONDS: i64 = 31 * 24 * 3600;
pub const EXPIRATION_TTL_MIN_SECONDS: i64 = 24 * 3600;
/// Dead-letter attempts bounds and default (Google).
pub const DEAD_LETTER_ATTEMPTS_MIN: i32 = 5;
pub const DEAD_LETTER_ATTEMPTS_MAX: i32 = 100;
/// Retry policy defaults and bound (Google).
pub const RETRY_MIN_BACKOFF_DEFAULT_MS: i64 = 10_000;
pub const RETRY_MAX_BACKOFF_DEFAULT_MS: i64 = 600_000;
pub const RETRY_BACKOFF_LIMIT_MS: i64 = 600_000;
/// Snapshots live at most this long (Google: 7 days).
pub const SNAPSHOT_MAX_AGE: chrono::Duration = chrono::Duration::days(7);

/// Knobs of the service.
#[derive(Debug, Clone)]
pub struct PubsubOptions {
    /// How long a Pull without `returnImmediately` waits for messages before answering empty;
    /// well under the 60 s the Python client waits (SPEC.md §7.5).
    pub pull_max_wait: Duration,
    /// How often acknowledgement progress is written to the store.
    pub progress_flush_interval: Duration,
    /// How often retention is applied and unreferenced streams removed.
    pub housekeeping_interval: Duration,
    /// Where "now" comes from: snapshot expiry, retention and ack deadlines.
    pub clock: Arc<dyn Clock>,
}

impl Default for PubsubOptions {
    fn default() -> Self {
        PubsubOptions {
            pull_max_wait: Duration::from_secs(10),
            progress_flush_interval: Duration::from_millis(50),
            housekeeping_interval: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
        }
    }
}

/// The result of a publish: message ids in request order.
#[derive(Debug, Clone)]
pub struct Published {
    pub message_ids: Vec<String>,
}

pub(crate) struct Subscription {
    pub(crate) config: RwLock<SubscriptionConfig>,
    pub(crate) state: Mutex<SubscriptionState>,
    /// Woken on acks, nacks, deadline changes, seeks and deletion.
    pub(crate) changed: Notify,
    pub(crate) deleted: AtomicBool,
}

impl Subscription {
    fn new(config: SubscriptionConfig, state: SubscriptionState) -> Arc<Subscription> {
        Arc::new(Subscription {
            config: RwLock::new(config),
            state: Mutex::new(state),
            changed: Notify::new(),
            deleted: AtomicBool::new(false),
        })
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// Numbered progress flushes: `running` lets one run at a time (an older snapshot of progress
/// must never be saved after a newer one); `started` counts flushes that took their snapshot,
/// `durable` is the number of the last one whose progress is on disk.
#[derive(Default)]
struct ProgressFlushes {
    running: tokio::sync::Mutex<()>,
    started: AtomicU64,
    durable: AtomicU64,
}

struct Inner {
    log: Arc<dyn MessageLog>,
    store: Arc<dyn PubsubStore>,
    options: PubsubOptions,
    topics: RwLock<BTreeMap<String, TopicConfig>>,
    subscriptions: RwLock<BTreeMap<String, Arc<Subscription>>>,
    snapshots: RwLock<BTreeMap<String, SnapshotConfig>>,
    /// Message streams of topics being created: made in the log, not yet in `topics`.
    /// Retention must not take them for orphans.
    creating: std::sync::Mutex<std::collections::HashSet<u64>>,
    next_stream: AtomicU64,
    flushes: ProgressFlushes,
    push: push::PushClient,
    /// Flips to true at shutdown; push tasks started later watch it too.
    shutdown: watch::Receiver<bool>,
}

/// The Pub/Sub service; cheap to clone.
#[derive(Clone)]
pub struct PubsubService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PubsubService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubsubService").finish_non_exhaustive()
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::Rejected(Rejection::new(
        ErrorCode::Internal,
        "a Pub/Sub lock was poisoned",
    ))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(v).map_err(|e| Error::Store(perch_store::Error::Backend(e.to_string())))
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    rmp_serde::from_slice(b).map_err(|e| Error::Store(perch_store::Error::Backend(e.to_string())))
}

fn random_uid() -> u64 {
    rand::random::<u64>() >> 1
}

/// Refuses an empty update mask.
fn check_mask(mask: &[String]) -> Result<()> {
    if mask.is_empty() {
        return Err(invalid(
            "the update mask is empty; name the fields to change in updateMask",
        ));
    }
    Ok(())
}

/// Checks a message retention duration against Google's bounds.
fn check_retention(seconds: i64) -> Result<()> {
    if !(RETENTION_MIN_SECONDS..=RETENTION_MAX_SECONDS).contains(&seconds) {
        return Err(invalid(format!(
            "messageRetentionDuration must be between 10 minutes and 31 days, got {seconds}s"
        )));
    }
    Ok(())
}

/// What delivery settings a subscription's config means.
pub(crate) fn delivery_settings(c: &SubscriptionConfig) -> DeliverySettings {
    let retry = c
        .retry
        .map(|r| {
            (
                Duration::from_millis(r.minimum_backoff_ms as u64),
                Duration::from_millis(r.maximum_backoff_ms as u64),
            )
        })
        // Push without a retry policy still backs off (Perch choice, SPEC.md §7.8).
        .or_else(|| {
            c.push.as_ref().map(|_| {
                (
                    push::PUSH_DEFAULT_MIN_BACKOFF,
                    push::PUSH_DEFAULT_MAX_BACKOFF,
                )
            })
        });
    DeliverySettings {
        ack_deadline: Duration::from_secs(c.ack_deadline_seconds.max(1) as u64),
        retry,
        max_delivery_attempts: c
            .dead_letter
            .as_ref()
            .map(|d| d.max_delivery_attempts as u32),
        filter: (!c.filter.is_empty())
            .then(|| Filter::parse(&c.filter).ok())
            .flatten(),
        ordering: c.enable_message_ordering,
        exactly_once: c.enable_exactly_once_delivery,
    }
}

/// A page of a sorted name-keyed map.
fn page<T: Clone>(
    map: &BTreeMap<String, T>,
    prefix: &str,
    page_size: usize,
    token: &str,
    keep: impl Fn(&T) -> bool,
) -> Result<(Vec<T>, String)> {
    let size = if page_size == 0 {
        100
    } else {
        page_size.min(1000)
    };
    let after = if token.is_empty() {
        None
    } else {
        Some(
            String::from_utf8(
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token)
                    .map_err(|_| invalid(format!("the page token '{token}' is invalid")))?,
            )
            .map_err(|_| invalid(format!("the page token '{token}' is invalid")))?,
        )
    };
    let mut out = Vec::new();
    let mut last = None;
    for (name, v) in map.range(prefix.to_owned()..) {
        if !name.starts_with(prefix) {
            break;
        }
        if after.as_ref().is_some_and(|a| name <= a) || !keep(v) {
            continue;
        }
        if out.len() == size {
            return Ok((
                out,
                last.map(|l: &String| {
                    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, l)
                })
                .unwrap_or_default(),
            ));
        }
        out.push(v.clone());
        last = Some(name);
    }
    Ok((out, String::new()))
}

impl PubsubService {
    /// Loads every resource, resumes subscriptions from their stored progress, and starts the
    /// background tasks (progress flush, retention, push). They stop when `shutdown` flips.
    pub async fn open(
        log: Arc<dyn MessageLog>,
        store: Arc<dyn PubsubStore>,
        options: PubsubOptions,
        shutdown: watch::Receiver<bool>,
    ) -> Result<PubsubService> {
        let topics = load_topics(&*log, &*store).await?;
        let subscriptions = load_subscriptions(&*log, &*store).await?;
        let mut snapshots = BTreeMap::new();
        for (name, bytes) in store.list_resources(ResourceKind::Snapshot).await? {
            snapshots.insert(name, decode::<SnapshotConfig>(&bytes)?);
        }
        tracing::info!(
            topics = topics.len(),
            subscriptions = subscriptions.len(),
            snapshots = snapshots.len(),
            "pubsub loaded"
        );
        let service = PubsubService {
            inner: Arc::new(Inner {
                log,
                store,
                options,
                topics: RwLock::new(topics),
                subscriptions: RwLock::new(subscriptions),
                snapshots: RwLock::new(snapshots),
                creating: Default::default(),
                next_stream: AtomicU64::new(1),
                flushes: ProgressFlushes::default(),
                push: push::PushClient::new(),
                shutdown: shutdown.clone(),
            }),
        };
        for sub in service.all_subscriptions()? {
            if sub.config.read().map_err(poisoned)?.push.is_some() {
                push::spawn(service.clone(), sub, shutdown.clone());
            }
        }
        tokio::spawn(service.clone().flush_loop(shutdown.clone()));
        tokio::spawn(service.clone().housekeeping_loop(shutdown));
        Ok(service)
    }

    pub(crate) fn push_client(&self) -> &push::PushClient {
        &self.inner.push
    }

    /// Wall-clock now, from the service's clock.
    fn now(&self) -> DateTime<Utc> {
        self.inner.options.clock.now()
    }

    /// Monotonic now, from the service's clock: what leases and backoffs are measured in.
    fn instant(&self) -> Instant {
        self.inner.options.clock.instant()
    }

    /// Writes a topic or snapshot through to the store, then keeps it in its map;
    /// `create_only` refuses to replace one (ALREADY_EXISTS).
    async fn put_resource<T: serde::Serialize + Clone>(
        &self,
        kind: ResourceKind,
        map: &RwLock<BTreeMap<String, T>>,
        name: &str,
        value: &T,
        create_only: bool,
    ) -> Result<()> {
        self.inner
            .store
            .put_resource(kind, name, encode(value)?, create_only)
            .await?;
        map.write()
            .map_err(poisoned)?
            .insert(name.to_owned(), value.clone());
        Ok(())
    }

    /// Every subscription, taken out of the map so that no map lock is held while they are used.
    fn all_subscriptions(&self) -> Result<Vec<Arc<Subscription>>> {
        Ok(self
            .inner
            .subscriptions
            .read()
            .map_err(poisoned)?
            .values()
            .cloned()
            .collect())
    }
}

/// The stored topics; each one's message stream is (re)created in the log.
async fn load_topics(
    log: &dyn MessageLog,
    store: &dyn PubsubStore,
) -> Result<BTreeMap<String, TopicConfig>> {
    let mut topics = BTreeMap::new();
    for (name, bytes) in store.list_resources(ResourceKind::Topic).await? {
        let t: TopicConfig = decode(&bytes)?;
        log.create_stream(t.uid).await?;
        topics.insert(name, t);
    }
    Ok(topics)
}

/// The stored subscriptions, each resumed from its stored ack progress.
async fn load_subscriptions(
    log: &dyn MessageLog,
    store: &dyn PubsubStore,
) -> Result<BTreeMap<String, Arc<Subscription>>> {
    let mut subscriptions = BTreeMap::new();
    for (name, bytes) in store.list_resources(ResourceKind::Subscription).await? {
        let c: SubscriptionConfig = decode(&bytes)?;
        log.create_stream(c.topic_uid).await?;
        let progress = store.load_progress(c.uid).await?;
        let first = log.first_seq(c.topic_uid)?;
        let state = SubscriptionState::new(
            c.uid,
            delivery_settings(&c),
            progress,
            c.start_seq.max(first),
        );
        subscriptions.insert(name, Subscription::new(c, state));
    }
    Ok(subscriptions)
}
