//! The Pub/Sub service: resources (topics, subscriptions, snapshots) kept in memory and written
//! through to the `PubsubStore`; publishing into the `MessageLog`; delivery through each
//! subscription's `SubscriptionState`; background tasks that persist ack progress, apply
//! retention and run push subscriptions.
//!
//! Ack progress reaches the store in numbered flushes, one at a time (`ProgressFlushes`): the
//! background loop runs one every `progress_flush_interval`, and an exactly-once acknowledgement
//! waits (`persist_acks`) for a flush that began after it was applied, so its confirmation is
//! sent only once it is on disk; waiting acks share one flush (group commit).
//!
//! Lock order: `topics` → `subscriptions` → `snapshots` → one subscription's `config` → its
//! `state`. No lock is held across an `.await`, except the async `ProgressFlushes::running`
//! around one whole flush.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use perch_core::{ErrorCode, Rejection};
use perch_store::log::{MessageLog, NewMessage, StoredMessage};
use perch_store::pubsub::{AckProgress, PubsubStore, ResourceKind};
use tokio::sync::{Notify, watch};

use crate::config::{SnapshotConfig, SubscriptionConfig, TopicConfig};
use crate::error::{failed_precondition, invalid, not_found};
use crate::filter::Filter;
use crate::names::{self, DELETED_TOPIC};
use crate::subscription::{AckId, AckIdError, Delivery, DeliverySettings, SubscriptionState, Want};
use crate::{Error, Result, push};

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
}

impl Default for PubsubOptions {
    fn default() -> Self {
        PubsubOptions {
            pull_max_wait: Duration::from_secs(10),
            progress_flush_interval: Duration::from_millis(50),
            housekeeping_interval: Duration::from_secs(10),
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

/// Checks one message against Google's limits.
fn check_message(i: usize, m: &NewMessage) -> Result<()> {
    if m.data.is_empty() && m.attributes.is_empty() {
        return Err(invalid(format!(
            "messages[{i}] has neither data nor attributes; a message needs at least one"
        )));
    }
    if m.data.len() > MESSAGE_MAX_BYTES {
        return Err(invalid(format!(
            "messages[{i}] has {} bytes of data; the limit is {MESSAGE_MAX_BYTES}",
            m.data.len()
        )));
    }
    if m.attributes.len() > ATTRIBUTES_MAX {
        return Err(invalid(format!(
            "messages[{i}] has {} attributes; the maximum is {ATTRIBUTES_MAX}",
            m.attributes.len()
        )));
    }
    for (k, v) in &m.attributes {
        if k.is_empty() || k.len() > ATTRIBUTE_KEY_MAX_BYTES {
            return Err(invalid(format!(
                "The attribute key \"{}\" in the request is {} bytes long, but keys must have 1 to {ATTRIBUTE_KEY_MAX_BYTES}. Refer to https://cloud.google.com/pubsub/quotas for more information.",
                k.chars().take(64).collect::<String>(),
                k.len()
            )));
        }
        if v.len() > ATTRIBUTE_VALUE_MAX_BYTES {
            return Err(invalid(format!(
                "The attribute \"{k}\" in the request has a value that is too long. The length is {} characters, but the maximum allowed is {ATTRIBUTE_VALUE_MAX_BYTES}. Refer to https://cloud.google.com/pubsub/quotas for more information.",
                v.len()
            )));
        }
    }
    if m.ordering_key.len() > ORDERING_KEY_MAX_BYTES {
        return Err(invalid(format!(
            "messages[{i}] has an ordering key of {} bytes; the limit is {ORDERING_KEY_MAX_BYTES}",
            m.ordering_key.len()
        )));
    }
    Ok(())
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
        let mut topics = BTreeMap::new();
        for (name, bytes) in store.list_resources(ResourceKind::Topic).await? {
            let t: TopicConfig = decode(&bytes)?;
            log.create_stream(t.uid).await?;
            topics.insert(name, t);
        }
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
            subscriptions.insert(
                name,
                Arc::new(Subscription {
                    config: RwLock::new(c),
                    state: Mutex::new(state),
                    changed: Notify::new(),
                    deleted: AtomicBool::new(false),
                }),
            );
        }
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
        let subs: Vec<Arc<Subscription>> = service
            .inner
            .subscriptions
            .read()
            .map_err(poisoned)?
            .values()
            .cloned()
            .collect();
        for sub in subs {
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

    // ----- topics -----

    pub async fn create_topic(&self, mut topic: TopicConfig) -> Result<TopicConfig> {
        names::topic(&topic.name)?;
        if let Some(r) = topic.message_retention_seconds
            && !(RETENTION_MIN_SECONDS..=RETENTION_MAX_SECONDS).contains(&r)
        {
            return Err(invalid(format!(
                "messageRetentionDuration must be between 10 minutes and 31 days, got {r}s"
            )));
        }
        topic.uid = random_uid();
        self.inner
            .creating
            .lock()
            .map_err(poisoned)?
            .insert(topic.uid);
        let created = async {
            self.inner
                .store
                .put_resource(ResourceKind::Topic, &topic.name, encode(&topic)?, true)
                .await?;
            self.inner.log.create_stream(topic.uid).await?;
            self.inner
                .topics
                .write()
                .map_err(poisoned)?
                .insert(topic.name.clone(), topic.clone());
            Ok::<(), Error>(())
        }
        .await;
        self.inner
            .creating
            .lock()
            .map_err(poisoned)?
            .remove(&topic.uid);
        created?;
        tracing::debug!(topic = %topic.name, "topic created");
        Ok(topic)
    }

    pub fn get_topic(&self, name: &str) -> Result<TopicConfig> {
        names::topic(name)?;
        self.inner
            .topics
            .read()
            .map_err(poisoned)?
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    pub fn list_topics(
        &self,
        project: &str,
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<TopicConfig>, String)> {
        page(
            &*self.inner.topics.read().map_err(poisoned)?,
            &format!("projects/{project}/topics/"),
            page_size,
            token,
            |_| true,
        )
    }

    pub async fn update_topic(&self, update: TopicConfig, mask: &[String]) -> Result<TopicConfig> {
        let mut topic = self.get_topic(&update.name)?;
        if mask.is_empty() {
            return Err(invalid(
                "the update mask is empty; name the fields to change in updateMask",
            ));
        }
        for path in mask {
            match path.as_str() {
                "labels" => topic.labels = update.labels.clone(),
                "message_retention_duration" => {
                    if let Some(r) = update.message_retention_seconds
                        && !(RETENTION_MIN_SECONDS..=RETENTION_MAX_SECONDS).contains(&r)
                    {
                        return Err(invalid(format!(
                            "messageRetentionDuration must be between 10 minutes and 31 days, got {r}s"
                        )));
                    }
                    topic.message_retention_seconds = update.message_retention_seconds;
                }
                other => {
                    return Err(invalid(format!(
                        "the update mask path '{other}' cannot be changed on a topic; use labels or message_retention_duration"
                    )));
                }
            }
        }
        self.inner
            .store
            .put_resource(ResourceKind::Topic, &topic.name, encode(&topic)?, false)
            .await?;
        self.inner
            .topics
            .write()
            .map_err(poisoned)?
            .insert(topic.name.clone(), topic.clone());
        Ok(topic)
    }

    /// Deletes a topic; its subscriptions stay, now naming `_deleted-topic_`, and keep their
    /// backlog (the stream is removed once nothing refers to it).
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.get_topic(name)?;
        self.inner
            .store
            .delete_resource(ResourceKind::Topic, name)
            .await?;
        self.inner.topics.write().map_err(poisoned)?.remove(name);
        let orphans: Vec<Arc<Subscription>> = self
            .inner
            .subscriptions
            .read()
            .map_err(poisoned)?
            .values()
            .filter(|s| s.config.read().map(|c| c.topic == name).unwrap_or(false))
            .cloned()
            .collect();
        for sub in orphans {
            let c = {
                let mut c = sub.config.write().map_err(poisoned)?;
                c.topic = DELETED_TOPIC.to_owned();
                c.clone()
            };
            self.inner
                .store
                .put_resource(ResourceKind::Subscription, &c.name, encode(&c)?, false)
                .await?;
        }
        Ok(())
    }

    pub fn list_topic_subscriptions(
        &self,
        topic: &str,
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<String>, String)> {
        self.get_topic(topic)?;
        let subs = self.inner.subscriptions.read().map_err(poisoned)?;
        let (items, next) = page(&subs, "projects/", page_size, token, |s| {
            s.config.read().map(|c| c.topic == topic).unwrap_or(false)
        })?;
        Ok((
            items
                .iter()
                .filter_map(|s| s.config.read().ok().map(|c| c.name.clone()))
                .collect(),
            next,
        ))
    }

    pub fn list_topic_snapshots(
        &self,
        topic: &str,
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<String>, String)> {
        self.get_topic(topic)?;
        let snaps = self.inner.snapshots.read().map_err(poisoned)?;
        let (items, next) = page(&snaps, "projects/", page_size, token, |s| s.topic == topic)?;
        Ok((items.into_iter().map(|s| s.name).collect(), next))
    }

    /// Publishes durably: returns once every message is in the log on disk.
    pub async fn publish(&self, topic: &str, messages: Vec<NewMessage>) -> Result<Published> {
        let uid = self.get_topic(topic)?.uid;
        if messages.is_empty() {
            return Err(invalid("the publish request has no messages"));
        }
        if messages.len() > PUBLISH_MAX_MESSAGES {
            return Err(invalid(format!(
                "the publish request has {} messages; the limit is {PUBLISH_MAX_MESSAGES}",
                messages.len()
            )));
        }
        let total: usize = messages.iter().map(NewMessage::size).sum();
        if total > PUBLISH_MAX_BYTES {
            return Err(invalid(format!(
                "the publish request has {total} bytes; the limit is {PUBLISH_MAX_BYTES}"
            )));
        }
        for (i, m) in messages.iter().enumerate() {
            check_message(i, m)?;
        }
        let appended = self.inner.log.append(uid, messages).await?;
        metrics::counter!("perch_pubsub_messages_published_total").increment(appended.len() as u64);
        Ok(Published {
            message_ids: appended.iter().map(|a| a.seq.to_string()).collect(),
        })
    }

    // ----- subscriptions -----

    fn subscription(&self, name: &str) -> Result<Arc<Subscription>> {
        names::subscription(name)?;
        self.inner
            .subscriptions
            .read()
            .map_err(poisoned)?
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// Validates a subscription config, filling Google's defaults.
    fn normalise(&self, c: &mut SubscriptionConfig) -> Result<()> {
        if c.ack_deadline_seconds == 0 {
            c.ack_deadline_seconds = ACK_DEADLINE_DEFAULT_SECONDS;
        }
        if !(ACK_DEADLINE_MIN_SECONDS..=ACK_DEADLINE_MAX_SECONDS).contains(&c.ack_deadline_seconds)
        {
            return Err(invalid(format!(
                "ackDeadlineSeconds must be between 10 and 600, got {}",
                c.ack_deadline_seconds
            )));
        }
        if c.message_retention_seconds == 0 {
            c.message_retention_seconds = RETENTION_DEFAULT_SECONDS;
        }
        if !(RETENTION_MIN_SECONDS..=RETENTION_MAX_SECONDS).contains(&c.message_retention_seconds) {
            return Err(invalid(format!(
                "messageRetentionDuration must be between 10 minutes and 31 days, got {}s",
                c.message_retention_seconds
            )));
        }
        if let Some(ttl) = c.expiration_ttl_seconds
            && ttl < EXPIRATION_TTL_MIN_SECONDS
        {
            return Err(invalid(format!(
                "expirationPolicy.ttl must be at least 1 day, got {ttl}s"
            )));
        }
        if !c.filter.is_empty() {
            Filter::parse(&c.filter)
                .map_err(|e| invalid(format!("the filter '{}' is invalid: {e}", c.filter)))?;
        }
        if let Some(d) = &mut c.dead_letter {
            names::topic(&d.topic)?;
            if d.max_delivery_attempts == 0 {
                d.max_delivery_attempts = DEAD_LETTER_ATTEMPTS_MIN;
            }
            if !(DEAD_LETTER_ATTEMPTS_MIN..=DEAD_LETTER_ATTEMPTS_MAX)
                .contains(&d.max_delivery_attempts)
            {
                return Err(invalid(format!(
                    "deadLetterPolicy.maxDeliveryAttempts must be between 5 and 100, got {}",
                    d.max_delivery_attempts
                )));
            }
            if !self
                .inner
                .topics
                .read()
                .map_err(poisoned)?
                .contains_key(&d.topic)
            {
                return Err(not_found(&d.topic));
            }
        }
        if let Some(r) = &c.retry {
            for (field, v) in [
                ("minimumBackoff", r.minimum_backoff_ms),
                ("maximumBackoff", r.maximum_backoff_ms),
            ] {
                if !(0..=RETRY_BACKOFF_LIMIT_MS).contains(&v) {
                    return Err(invalid(format!(
                        "retryPolicy.{field} must be between 0 and 600 seconds, got {} ms",
                        v
                    )));
                }
            }
            if r.minimum_backoff_ms > r.maximum_backoff_ms {
                return Err(invalid(
                    "retryPolicy.minimumBackoff must not exceed maximumBackoff",
                ));
            }
        }
        if let Some(p) = &c.push
            && !(p.endpoint.starts_with("http://") || p.endpoint.starts_with("https://"))
        {
            return Err(invalid(format!(
                "pushConfig.pushEndpoint must be an http or https URL, got '{}'",
                p.endpoint
            )));
        }
        Ok(())
    }

    pub async fn create_subscription(
        &self,
        mut c: SubscriptionConfig,
    ) -> Result<SubscriptionConfig> {
        names::subscription(&c.name)?;
        names::topic(&c.topic)?;
        let topic = self
            .inner
            .topics
            .read()
            .map_err(poisoned)?
            .get(&c.topic)
            .cloned()
            .ok_or_else(|| not_found(&c.topic))?;
        self.normalise(&mut c)?;
        c.uid = random_uid();
        c.topic_uid = topic.uid;
        c.start_seq = self.inner.log.next_seq(topic.uid)?;
        c.detached = false;
        self.inner
            .store
            .put_resource(ResourceKind::Subscription, &c.name, encode(&c)?, true)
            .await?;
        let state = SubscriptionState::new(
            c.uid,
            delivery_settings(&c),
            AckProgress::default(),
            c.start_seq,
        );
        let sub = Arc::new(Subscription {
            config: RwLock::new(c.clone()),
            state: Mutex::new(state),
            changed: Notify::new(),
            deleted: AtomicBool::new(false),
        });
        self.inner
            .subscriptions
            .write()
            .map_err(poisoned)?
            .insert(c.name.clone(), sub.clone());
        if c.push.is_some() {
            push::spawn(self.clone(), sub, self.inner.shutdown.clone());
        }
        tracing::debug!(subscription = %c.name, topic = %c.topic, "subscription created");
        Ok(c)
    }

    pub fn get_subscription(&self, name: &str) -> Result<SubscriptionConfig> {
        Ok(self
            .subscription(name)?
            .config
            .read()
            .map_err(poisoned)?
            .clone())
    }

    /// Names of every subscription of every project (the telemetry sink finds its own here).
    pub fn subscription_names(&self) -> Vec<String> {
        self.inner
            .subscriptions
            .read()
            .map(|subs| subs.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn list_subscriptions(
        &self,
        project: &str,
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<SubscriptionConfig>, String)> {
        let subs = self.inner.subscriptions.read().map_err(poisoned)?;
        let (items, next) = page(
            &subs,
            &format!("projects/{project}/subscriptions/"),
            page_size,
            token,
            |_| true,
        )?;
        Ok((
            items
                .iter()
                .filter_map(|s| s.config.read().ok().map(|c| c.clone()))
                .collect(),
            next,
        ))
    }

    pub async fn update_subscription(
        &self,
        update: SubscriptionConfig,
        mask: &[String],
    ) -> Result<SubscriptionConfig> {
        let sub = self.subscription(&update.name)?;
        if mask.is_empty() {
            return Err(invalid(
                "the update mask is empty; name the fields to change in updateMask",
            ));
        }
        let mut c = sub.config.read().map_err(poisoned)?.clone();
        let had_push = c.push.is_some();
        for path in mask {
            match crate::api::top_level(path) {
                "ack_deadline_seconds" => c.ack_deadline_seconds = update.ack_deadline_seconds,
                "push_config" => c.push = update.push.clone(),
                "retain_acked_messages" => c.retain_acked_messages = update.retain_acked_messages,
                "message_retention_duration" => {
                    c.message_retention_seconds = update.message_retention_seconds
                }
                "labels" => c.labels = update.labels.clone(),
                "expiration_policy" => c.expiration_ttl_seconds = update.expiration_ttl_seconds,
                "dead_letter_policy" => c.dead_letter = update.dead_letter.clone(),
                "retry_policy" => c.retry = update.retry,
                "enable_exactly_once_delivery" => {
                    c.enable_exactly_once_delivery = update.enable_exactly_once_delivery
                }
                "detached" if update.detached => c.detached = true,
                other => {
                    return Err(invalid(format!(
                        "the update mask path '{other}' cannot be changed on a subscription (filter, topic and enableMessageOrdering are fixed at create)"
                    )));
                }
            }
        }
        self.normalise(&mut c)?;
        self.save_subscription(&sub, c.clone()).await?;
        if !had_push && c.push.is_some() {
            push::spawn(self.clone(), sub, self.inner.shutdown.clone());
        }
        Ok(c)
    }

    async fn save_subscription(
        &self,
        sub: &Arc<Subscription>,
        c: SubscriptionConfig,
    ) -> Result<()> {
        self.inner
            .store
            .put_resource(ResourceKind::Subscription, &c.name, encode(&c)?, false)
            .await?;
        sub.state
            .lock()
            .map_err(poisoned)?
            .set_settings(delivery_settings(&c));
        *sub.config.write().map_err(poisoned)? = c;
        sub.changed.notify_waiters();
        Ok(())
    }

    pub async fn modify_push_config(
        &self,
        name: &str,
        push: Option<crate::config::PushConfig>,
    ) -> Result<()> {
        let sub = self.subscription(name)?;
        let mut c = sub.config.read().map_err(poisoned)?.clone();
        let had_push = c.push.is_some();
        c.push = push;
        self.normalise(&mut c)?;
        let has_push = c.push.is_some();
        self.save_subscription(&sub, c).await?;
        if !had_push && has_push {
            push::spawn(self.clone(), sub, self.inner.shutdown.clone());
        }
        Ok(())
    }

    pub async fn delete_subscription(&self, name: &str) -> Result<()> {
        let sub = self.subscription(name)?;
        let uid = sub.config.read().map_err(poisoned)?.uid;
        self.inner
            .store
            .delete_resource(ResourceKind::Subscription, name)
            .await?;
        self.inner.store.delete_progress(uid).await?;
        self.inner
            .subscriptions
            .write()
            .map_err(poisoned)?
            .remove(name);
        sub.deleted.store(true, Ordering::SeqCst);
        sub.changed.notify_waiters();
        Ok(())
    }

    /// Detaches a subscription from its topic: its backlog is dropped and pulls fail.
    pub async fn detach_subscription(&self, name: &str) -> Result<()> {
        let sub = self.subscription(name)?;
        let mut c = sub.config.read().map_err(poisoned)?.clone();
        c.detached = true;
        let head = self.inner.log.next_seq(c.topic_uid)?;
        sub.state.lock().map_err(poisoned)?.reset(head, []);
        self.save_subscription(&sub, c).await
    }

    /// The live subscription, refusing detached ones (FAILED_PRECONDITION) and deleted ones.
    pub(crate) fn active_subscription(&self, name: &str) -> Result<Arc<Subscription>> {
        let sub = self.subscription(name)?;
        if sub.config.read().map_err(poisoned)?.detached {
            return Err(failed_precondition(format!(
                "subscription `{name}` is detached from its topic"
            )));
        }
        Ok(sub)
    }

    /// Takes deliverable messages from a subscription and forwards any dead letters.
    pub(crate) async fn take(
        &self,
        sub: &Arc<Subscription>,
        stream: Option<u64>,
        max: usize,
        max_bytes: usize,
        deadline: Duration,
    ) -> Result<Vec<Delivery>> {
        let (topic_uid, sub_name, dead_letter) = {
            let c = sub.config.read().map_err(poisoned)?;
            (c.topic_uid, c.name.clone(), c.dead_letter.clone())
        };
        let log = self.inner.log.clone();
        let head = log.next_seq(topic_uid)?;
        let taken = {
            let mut state = sub.state.lock().map_err(poisoned)?;
            let mut read = |from: u64, n: usize| match log.read(
                topic_uid,
                from,
                n,
                MESSAGE_MAX_BYTES,
            ) {
                Ok(messages) => Some(messages),
                Err(e) => {
                    // Not retention: the messages stay owed and a later pull retries.
                    tracing::error!(subscription = %sub_name, error = %e, "cannot read the topic's message log");
                    None
                }
            };
            let want = Want {
                stream,
                max_count: max,
                max_bytes,
                deadline,
            };
            state.take(Instant::now(), want, head, &mut read)
        };
        if !taken.dead_letters.is_empty()
            && let Some(policy) = dead_letter
        {
            self.forward_dead_letters(&sub_name, &policy.topic, taken.dead_letters)
                .await;
        }
        metrics::counter!("perch_pubsub_messages_delivered_total")
            .increment(taken.deliveries.len() as u64);
        Ok(taken.deliveries)
    }

    async fn forward_dead_letters(
        &self,
        sub: &str,
        topic: &str,
        letters: Vec<(StoredMessage, u32)>,
    ) {
        let messages: Vec<NewMessage> = letters
            .into_iter()
            .map(|(m, attempts)| {
                let mut msg = m.message;
                msg.attributes.insert(
                    "CloudPubSubDeadLetterSourceDeliveryCount".into(),
                    attempts.to_string(),
                );
                msg.attributes.insert(
                    "CloudPubSubDeadLetterSourceSubscription".into(),
                    names::id(sub).to_owned(),
                );
                msg.attributes.insert(
                    "CloudPubSubDeadLetterSourceSubscriptionProject".into(),
                    names::project_of(sub).to_owned(),
                );
                msg.attributes.insert(
                    "CloudPubSubDeadLetterSourceTopicPublishTime".into(),
                    m.publish_time
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                );
                msg
            })
            .collect();
        let count = messages.len();
        if let Err(e) = self.publish(topic, messages).await {
            tracing::warn!(subscription = sub, dead_letter_topic = topic, count, error = %e, "dead-letter forwarding failed; the messages were dropped");
        }
    }

    /// Unary Pull: waits up to `pull_max_wait` (or `client_wait`, when the client's deadline is
    /// shorter) for messages unless `return_immediately`.
    pub async fn pull(
        &self,
        name: &str,
        max_messages: usize,
        return_immediately: bool,
        client_wait: Option<Duration>,
    ) -> Result<Vec<Delivery>> {
        if max_messages == 0 {
            return Err(invalid("maxMessages must be greater than 0"));
        }
        let sub = self.active_subscription(name)?;
        let max = max_messages.min(PULL_MAX_MESSAGES);
        let topic_uid = sub.config.read().map_err(poisoned)?.topic_uid;
        let mut appended = self.inner.log.watch(topic_uid)?;
        let wait = client_wait.map_or(self.inner.options.pull_max_wait, |w| {
            w.min(self.inner.options.pull_max_wait)
        });
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            let deadline = sub.state.lock().map_err(poisoned)?.settings().ack_deadline;
            let got = self
                .take(&sub, None, max, RESPONSE_MAX_BYTES, deadline)
                .await?;
            if !got.is_empty() || return_immediately || sub.deleted.load(Ordering::SeqCst) {
                return Ok(got);
            }
            let wake = sub
                .state
                .lock()
                .map_err(poisoned)?
                .next_wakeup()
                .map(tokio::time::Instant::from_std);
            let until = wake.map(|w| w.min(give_up)).unwrap_or(give_up);
            tokio::select! {
                _ = appended.changed() => {}
                _ = sub.changed.notified() => {}
                _ = tokio::time::sleep_until(until) => {}
            }
            if tokio::time::Instant::now() >= give_up {
                return Ok(Vec::new());
            }
        }
    }

    fn parse_ack_ids(&self, sub: &Subscription, ids: &[String]) -> Result<Vec<AckId>> {
        let uid = sub.config.read().map_err(poisoned)?.uid;
        ids.iter()
            .map(|s| match AckId::parse(s) {
                Some(id) if id.subscription == uid => Ok(id),
                _ => Err(invalid(format!(
                    "the ack id '{s}' is not valid for this subscription"
                ))),
            })
            .collect()
    }

    /// Acknowledges; returns the ids that were refused as expired (exactly-once only).
    pub fn acknowledge(&self, name: &str, ack_ids: &[String]) -> Result<Vec<String>> {
        let sub = self.subscription(name)?;
        let ids = self.parse_ack_ids(&sub, ack_ids)?;
        let mut refused = Vec::new();
        {
            let mut state = sub.state.lock().map_err(poisoned)?;
            for (id, raw) in ids.iter().zip(ack_ids) {
                match state.ack(id) {
                    Ok(()) => {}
                    Err(AckIdError::Expired) | Err(AckIdError::Malformed) => {
                        refused.push(raw.clone())
                    }
                }
            }
        }
        sub.changed.notify_waiters();
        metrics::counter!("perch_pubsub_messages_acked_total")
            .increment((ack_ids.len() - refused.len()) as u64);
        Ok(refused)
    }

    /// Sets deadlines (0 = nack); returns ids whose lease had already ended.
    pub fn modify_ack_deadline(
        &self,
        name: &str,
        ack_ids: &[String],
        seconds: i32,
    ) -> Result<Vec<String>> {
        if !(0..=ACK_DEADLINE_MAX_SECONDS).contains(&seconds) {
            return Err(invalid(format!(
                "ackDeadlineSeconds must be between 0 and 600, got {seconds}"
            )));
        }
        let sub = self.subscription(name)?;
        let ids = self.parse_ack_ids(&sub, ack_ids)?;
        let now = Instant::now();
        let mut refused = Vec::new();
        {
            let mut state = sub.state.lock().map_err(poisoned)?;
            for (id, raw) in ids.iter().zip(ack_ids) {
                if state.modify_deadline(id, seconds as u32, now).is_err() {
                    refused.push(raw.clone());
                }
            }
        }
        sub.changed.notify_waiters();
        Ok(refused)
    }

    /// Opens a streaming-pull stream on a subscription.
    pub fn open_stream(&self, name: &str) -> Result<Stream> {
        let sub = self.active_subscription(name)?;
        let topic_uid = sub.config.read().map_err(poisoned)?.topic_uid;
        Ok(Stream {
            service: self.clone(),
            appended: self.inner.log.watch(topic_uid)?,
            sub,
            id: self.inner.next_stream.fetch_add(1, Ordering::Relaxed),
        })
    }

    // ----- seek and snapshots -----

    pub async fn seek_to_time(&self, name: &str, time: DateTime<Utc>) -> Result<()> {
        let sub = self.active_subscription(name)?;
        let topic_uid = sub.config.read().map_err(poisoned)?.topic_uid;
        let seq = self
            .inner
            .log
            .seq_at_time(topic_uid, time)?
            .max(self.inner.log.first_seq(topic_uid)?);
        sub.state.lock().map_err(poisoned)?.reset(seq, []);
        sub.changed.notify_waiters();
        Ok(())
    }

    pub async fn seek_to_snapshot(&self, name: &str, snapshot: &str) -> Result<()> {
        names::snapshot(snapshot)?;
        let sub = self.active_subscription(name)?;
        let snap = self
            .inner
            .snapshots
            .read()
            .map_err(poisoned)?
            .get(snapshot)
            .cloned()
            .ok_or_else(|| not_found(snapshot))?;
        let topic_uid = sub.config.read().map_err(poisoned)?.topic_uid;
        if snap.topic_uid != topic_uid {
            return Err(invalid(format!(
                "snapshot `{snapshot}` belongs to topic `{}`, not to this subscription's topic",
                snap.topic
            )));
        }
        let first = self.inner.log.first_seq(topic_uid)?;
        sub.state
            .lock()
            .map_err(poisoned)?
            .reset(snap.floor.max(first), snap.acked);
        sub.changed.notify_waiters();
        Ok(())
    }

    pub async fn create_snapshot(
        &self,
        name: &str,
        subscription: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<SnapshotConfig> {
        names::snapshot(name)?;
        let sub = self.active_subscription(subscription)?;
        let c = sub.config.read().map_err(poisoned)?.clone();
        if c.topic == DELETED_TOPIC {
            return Err(failed_precondition(format!(
                "the topic of subscription `{subscription}` was deleted"
            )));
        }
        let progress = sub.state.lock().map_err(poisoned)?.progress();
        let snap = SnapshotConfig {
            name: name.to_owned(),
            topic: c.topic.clone(),
            topic_uid: c.topic_uid,
            expire_time: Utc::now() + SNAPSHOT_MAX_AGE,
            labels,
            floor: progress.floor,
            acked: progress.acked,
        };
        self.inner
            .store
            .put_resource(ResourceKind::Snapshot, name, encode(&snap)?, true)
            .await?;
        self.inner
            .snapshots
            .write()
            .map_err(poisoned)?
            .insert(name.to_owned(), snap.clone());
        Ok(snap)
    }

    pub fn get_snapshot(&self, name: &str) -> Result<SnapshotConfig> {
        names::snapshot(name)?;
        self.inner
            .snapshots
            .read()
            .map_err(poisoned)?
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    pub fn list_snapshots(
        &self,
        project: &str,
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<SnapshotConfig>, String)> {
        page(
            &*self.inner.snapshots.read().map_err(poisoned)?,
            &format!("projects/{project}/snapshots/"),
            page_size,
            token,
            |_| true,
        )
    }

    pub async fn update_snapshot(
        &self,
        update: SnapshotConfig,
        mask: &[String],
    ) -> Result<SnapshotConfig> {
        let mut snap = self.get_snapshot(&update.name)?;
        if mask.is_empty() {
            return Err(invalid(
                "the update mask is empty; name the fields to change in updateMask",
            ));
        }
        for path in mask {
            match path.as_str() {
                "labels" => snap.labels = update.labels.clone(),
                "expire_time" => snap.expire_time = update.expire_time,
                other => {
                    return Err(invalid(format!(
                        "the update mask path '{other}' cannot be changed on a snapshot; use labels or expire_time"
                    )));
                }
            }
        }
        self.inner
            .store
            .put_resource(ResourceKind::Snapshot, &snap.name, encode(&snap)?, false)
            .await?;
        self.inner
            .snapshots
            .write()
            .map_err(poisoned)?
            .insert(snap.name.clone(), snap.clone());
        Ok(snap)
    }

    pub async fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.get_snapshot(name)?;
        self.inner
            .store
            .delete_resource(ResourceKind::Snapshot, name)
            .await?;
        self.inner.snapshots.write().map_err(poisoned)?.remove(name);
        Ok(())
    }

    // ----- background work -----

    /// Writes changed acknowledgement progress to the store.
    pub async fn flush_progress(&self) -> Result<()> {
        let _running = self.inner.flushes.running.lock().await;
        self.flush_progress_now().await
    }

    /// Returns once every acknowledgement applied before the call is on disk: exactly-once
    /// confirmations are sent only after this. Concurrent callers share one flush.
    pub async fn persist_acks(&self) -> Result<()> {
        let flushes = &self.inner.flushes;
        // Any flush numbered above the current count snapshots progress after our acks.
        let needed = flushes.started.load(Ordering::SeqCst) + 1;
        let _running = flushes.running.lock().await;
        if flushes.durable.load(Ordering::SeqCst) >= needed {
            return Ok(());
        }
        self.flush_progress_now().await
    }

    /// One numbered flush; the caller holds `flushes.running`. Progress whose save fails is
    /// marked unsaved again, so the next flush retries it.
    async fn flush_progress_now(&self) -> Result<()> {
        let flushes = &self.inner.flushes;
        let number = flushes.started.fetch_add(1, Ordering::SeqCst) + 1;
        let subs: Vec<Arc<Subscription>> = self
            .inner
            .subscriptions
            .read()
            .map_err(poisoned)?
            .values()
            .cloned()
            .collect();
        let mut updates = Vec::new();
        let mut taken_from = Vec::new();
        for sub in subs {
            let uid = sub.config.read().map_err(poisoned)?.uid;
            let taken = sub.state.lock().map_err(poisoned)?.take_progress();
            if let Some(p) = taken {
                updates.push((uid, p));
                taken_from.push(sub);
            }
        }
        if !updates.is_empty()
            && let Err(e) = self.inner.store.save_progress(updates).await
        {
            for sub in taken_from {
                sub.state.lock().map_err(poisoned)?.mark_unsaved();
            }
            return Err(e.into());
        }
        flushes.durable.store(number, Ordering::SeqCst);
        Ok(())
    }

    async fn flush_loop(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.inner.options.progress_flush_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            if let Err(e) = self.flush_progress().await {
                tracing::warn!(error = %e, "could not save acknowledgement progress; will retry");
            }
        }
        if let Err(e) = self.flush_progress().await {
            tracing::error!(error = %e, "could not save acknowledgement progress at shutdown; acked messages may be redelivered");
        }
    }

    async fn housekeeping_loop(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.inner.options.housekeeping_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.apply_retention().await {
                tracing::warn!(error = %e, "retention pass failed");
            }
        }
    }

    fn topic_has_subscriptions(&self, topic_uid: u64) -> Result<bool> {
        Ok(self
            .inner
            .subscriptions
            .read()
            .map_err(poisoned)?
            .values()
            .any(|s| s.config.read().is_ok_and(|c| c.topic_uid == topic_uid)))
    }

    /// Drops whole log segments nothing needs any more, and streams nothing refers to.
    pub async fn apply_retention(&self) -> Result<()> {
        let now = Utc::now();
        let log = self.inner.log.clone();
        // Listed before anything else is read: a stream made after this is not touched, and one
        // made before it belongs to a topic that is by now in `topics` or still in `creating`.
        let streams = log.streams();
        let mut keep: HashMap<u64, u64> = HashMap::new();
        let mut referenced: HashMap<u64, ()> = HashMap::new();
        for uid in self.inner.creating.lock().map_err(poisoned)?.iter() {
            referenced.insert(*uid, ());
        }
        for t in self.inner.topics.read().map_err(poisoned)?.values() {
            referenced.insert(t.uid, ());
            let k = match t.message_retention_seconds {
                Some(r) => log.seq_at_time(t.uid, now - chrono::Duration::seconds(r))?,
                None => u64::MAX,
            };
            keep.insert(t.uid, k);
        }
        let subs: Vec<Arc<Subscription>> = self
            .inner
            .subscriptions
            .read()
            .map_err(poisoned)?
            .values()
            .cloned()
            .collect();
        for sub in &subs {
            let c = sub.config.read().map_err(poisoned)?.clone();
            referenced.insert(c.topic_uid, ());
            let expired = log.seq_at_time(
                c.topic_uid,
                now - chrono::Duration::seconds(c.message_retention_seconds),
            )?;
            let floor = sub.state.lock().map_err(poisoned)?.floor();
            let k = if c.retain_acked_messages {
                expired
            } else {
                floor.max(expired)
            };
            let entry = keep.entry(c.topic_uid).or_insert(u64::MAX);
            *entry = (*entry).min(k);
        }
        for snap in self.inner.snapshots.read().map_err(poisoned)?.values() {
            if snap.expire_time > now {
                referenced.insert(snap.topic_uid, ());
                let entry = keep.entry(snap.topic_uid).or_insert(u64::MAX);
                *entry = (*entry).min(snap.floor);
            }
        }
        for (uid, before) in keep {
            if before > 1 && before != u64::MAX {
                log.truncate_before(uid, before).await?;
            } else if before == u64::MAX {
                // A topic with no subscriptions and no retention keeps nothing. The head is read
                // first and the subscriptions checked after: one made since starts at or after
                // that head, so nothing it is owed is dropped.
                let head = log.next_seq(uid)?;
                if !self.topic_has_subscriptions(uid)? {
                    log.truncate_before(uid, head).await?;
                }
            }
        }
        for stream in streams {
            if !referenced.contains_key(&stream) {
                log.delete_stream(stream).await?;
            }
        }
        let expired: Vec<String> = self
            .inner
            .snapshots
            .read()
            .map_err(poisoned)?
            .values()
            .filter(|s| s.expire_time <= now)
            .map(|s| s.name.clone())
            .collect();
        for name in expired {
            self.delete_snapshot(&name).await?;
        }
        Ok(())
    }
}

/// One streaming-pull stream. Dropping it ends its leases as nacks, so another stream (or the
/// same client reconnecting) gets the messages at once.
pub struct Stream {
    service: PubsubService,
    sub: Arc<Subscription>,
    appended: watch::Receiver<u64>,
    id: u64,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// Messages outstanding on this stream (count, bytes).
    pub fn outstanding(&self) -> (usize, usize) {
        self.sub
            .state
            .lock()
            .map(|s| s.outstanding(self.id))
            .unwrap_or((0, 0))
    }

    pub fn is_deleted(&self) -> bool {
        self.sub.deleted.load(Ordering::SeqCst)
    }

    pub fn is_detached(&self) -> bool {
        self.sub.config.read().map(|c| c.detached).unwrap_or(true)
    }

    /// Takes up to the flow-control room left, leasing for `deadline`.
    pub async fn take(
        &self,
        max_count: usize,
        max_bytes: usize,
        deadline: Duration,
    ) -> Result<Vec<Delivery>> {
        let (count, bytes) = self.outstanding();
        if count >= max_count || bytes >= max_bytes {
            return Ok(Vec::new());
        }
        self.service
            .take(
                &self.sub,
                Some(self.id),
                max_count - count,
                (max_bytes - bytes).min(RESPONSE_MAX_BYTES),
                deadline,
            )
            .await
    }

    /// Waits until something may have changed: new messages, acks, a timer, or deletion.
    pub async fn wait(&mut self) {
        let wake = self
            .sub
            .state
            .lock()
            .ok()
            .and_then(|s| s.next_wakeup())
            .map(tokio::time::Instant::from_std);
        let sleep = async {
            match wake {
                Some(w) => tokio::time::sleep_until(w).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.appended.changed() => {}
            _ = self.sub.changed.notified() => {}
            _ = sleep => {}
        }
    }

    pub fn subscription_properties(&self) -> (bool, bool) {
        self.sub
            .config
            .read()
            .map(|c| (c.enable_exactly_once_delivery, c.enable_message_ordering))
            .unwrap_or((false, false))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Ok(mut state) = self.sub.state.lock() {
            state.drop_stream(self.id, Instant::now());
        }
        self.sub.changed.notify_waiters();
    }
}

/// Resolves once `shutdown` says stop (without holding the channel's lock across awaits); a
/// dropped sender counts as stop.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
