//! Delivery: taking messages under leases (unary Pull and streaming-pull `Stream`s),
//! acknowledgements, ack deadline changes and nacks, and forwarding dead letters.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use perch_store::log::{NewMessage, StoredMessage};
use tokio::sync::watch;

use super::{
    ACK_DEADLINE_MAX_SECONDS, MESSAGE_MAX_BYTES, PULL_MAX_MESSAGES, PubsubService,
    RESPONSE_MAX_BYTES, Subscription, poisoned,
};
use crate::Result;
use crate::error::invalid;
use crate::names;
use crate::subscription::{AckId, AckIdError, Delivery, Want};

impl PubsubService {
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
            state.take(self.instant(), want, head, &mut read)
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
        let now = self.instant();
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
            state.drop_stream(self.id, self.service.instant());
        }
        self.sub.changed.notify_waiters();
    }
}
