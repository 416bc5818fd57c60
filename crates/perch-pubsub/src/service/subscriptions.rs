//! Subscriptions: create (validating the config and filling Google's defaults), get, list,
//! update, push config, delete and detach.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use perch_store::pubsub::{AckProgress, ResourceKind};

use super::{
    ACK_DEADLINE_DEFAULT_SECONDS, ACK_DEADLINE_MAX_SECONDS, ACK_DEADLINE_MIN_SECONDS,
    DEAD_LETTER_ATTEMPTS_MAX, DEAD_LETTER_ATTEMPTS_MIN, EXPIRATION_TTL_MIN_SECONDS, PubsubService,
    RETENTION_DEFAULT_SECONDS, RETRY_BACKOFF_LIMIT_MS, Subscription, check_mask, check_retention,
    delivery_settings, encode, page, poisoned, random_uid,
};
use crate::Result;
use crate::config::{DeadLetterPolicy, RetryPolicy, SubscriptionConfig};
use crate::error::{failed_precondition, invalid, not_found};
use crate::filter::Filter;
use crate::names;
use crate::push;
use crate::subscription::SubscriptionState;

impl PubsubService {
    pub(super) fn subscription(&self, name: &str) -> Result<Arc<Subscription>> {
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
        check_retention(c.message_retention_seconds)?;
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
            self.check_dead_letter(d)?;
        }
        if let Some(r) = &c.retry {
            check_retry(r)?;
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

    /// Validates a dead-letter policy (its topic must exist), filling the default attempts.
    fn check_dead_letter(&self, d: &mut DeadLetterPolicy) -> Result<()> {
        names::topic(&d.topic)?;
        if d.max_delivery_attempts == 0 {
            d.max_delivery_attempts = DEAD_LETTER_ATTEMPTS_MIN;
        }
        if !(DEAD_LETTER_ATTEMPTS_MIN..=DEAD_LETTER_ATTEMPTS_MAX).contains(&d.max_delivery_attempts)
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
        let sub = Subscription::new(c.clone(), state);
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
        check_mask(mask)?;
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
}

/// Checks a retry policy's backoff bounds.
fn check_retry(r: &RetryPolicy) -> Result<()> {
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
    Ok(())
}
