//! Push subscriptions: one task per subscription POSTs each message to its endpoint, acks on
//! 102/200/201/202/204 and nacks otherwise (which backs off per the retry policy, or 100 ms to
//! 60 s without one). At most `PUSH_CONCURRENCY` requests are in flight per subscription.
//!
//! Redirects are not followed: a 3xx answer is a failed delivery, retried with back-off like any
//! other. Push endpoint URLs are trusted operator configuration (whoever may create a push
//! subscription may make the server POST to any address it can reach); refusing redirects keeps
//! a reachable endpoint from bouncing deliveries to a different one.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::sync::watch;

use crate::config::PushWrapper;
use crate::service::{PubsubService, Subscription};
use crate::subscription::Delivery;

/// Backoff for push subscriptions without a retry policy (Perch choice, SPEC.md §7.8).
pub(crate) const PUSH_DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(100);
pub(crate) const PUSH_DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Requests in flight per push subscription.
const PUSH_CONCURRENCY: usize = 16;
/// HTTP statuses that acknowledge a pushed message (Google).
const ACK_STATUSES: [u16; 5] = [102, 200, 201, 202, 204];

/// The HTTP client push deliveries share.
#[derive(Debug, Clone)]
pub(crate) struct PushClient {
    http: reqwest::Client,
}

impl PushClient {
    pub(crate) fn new() -> PushClient {
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        PushClient { http }
    }
}

fn wrapped_body(subscription: &str, d: &Delivery) -> serde_json::Value {
    let m = &d.message;
    let id = m.seq.to_string();
    let time = m
        .publish_time
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut message = serde_json::json!({
        "data": STANDARD.encode(&m.message.data),
        "messageId": id,
        "message_id": id,
        "publishTime": time,
        "publish_time": time,
    });
    if !m.message.attributes.is_empty() {
        message["attributes"] = serde_json::to_value(&m.message.attributes).unwrap_or_default();
    }
    if !m.message.ordering_key.is_empty() {
        message["orderingKey"] = m.message.ordering_key.clone().into();
    }
    let mut body = serde_json::json!({ "message": message, "subscription": subscription });
    if d.delivery_attempt > 0 {
        body["deliveryAttempt"] = d.delivery_attempt.into();
    }
    body
}

/// POSTs one delivery; true when the endpoint acknowledged it.
async fn deliver(
    client: &PushClient,
    sub: &str,
    config: &crate::config::PushConfig,
    d: &Delivery,
    timeout: Duration,
) -> bool {
    let mut request = client.http.post(&config.endpoint).timeout(timeout);
    request = match &config.wrapper {
        PushWrapper::Pubsub => request.json(&wrapped_body(sub, d)),
        PushWrapper::NoWrapper { write_metadata } => {
            let mut r = request.body(d.message.message.data.clone());
            if *write_metadata {
                r = r
                    .header("x-goog-pubsub-subscription-name", sub)
                    .header("x-goog-pubsub-message-id", d.message.seq.to_string())
                    .header(
                        "x-goog-pubsub-publish-time",
                        d.message.publish_time.to_rfc3339(),
                    );
                for (k, v) in &d.message.message.attributes {
                    r = r.header(k.as_str(), v.as_str());
                }
            }
            r
        }
    };
    match request.send().await {
        Ok(resp) => ACK_STATUSES.contains(&resp.status().as_u16()),
        Err(e) => {
            tracing::debug!(subscription = sub, error = %e, "push delivery failed");
            false
        }
    }
}

/// Runs the push loop of a subscription until it is deleted, switched to pull, or shut down.
pub(crate) fn spawn(
    service: PubsubService,
    sub: Arc<Subscription>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let Ok(name) = sub.config.read().map(|c| c.name.clone()) else {
            return;
        };
        let Ok(mut stream) = service.open_stream(&name) else {
            return;
        };
        loop {
            if stream.is_deleted() || *shutdown.borrow() {
                return;
            }
            let Ok(config) = sub.config.read().map(|c| c.clone()) else {
                return;
            };
            let Some(push) = config.push.clone() else {
                return;
            };
            let timeout = Duration::from_secs(config.ack_deadline_seconds.max(1) as u64);
            if !config.detached {
                match stream.take(PUSH_CONCURRENCY, usize::MAX, timeout).await {
                    Ok(deliveries) => {
                        for d in deliveries {
                            let (service, name, push, client) = (
                                service.clone(),
                                name.clone(),
                                push.clone(),
                                service.push_client().clone(),
                            );
                            tokio::spawn(async move {
                                let ok = deliver(&client, &name, &push, &d, timeout).await;
                                let ids = [d.ack_id.clone()];
                                let _ = if ok {
                                    service.acknowledge(&name, &ids)
                                } else {
                                    service.modify_ack_deadline(&name, &ids, 0)
                                };
                            });
                        }
                    }
                    Err(e) => tracing::debug!(subscription = %name, error = %e, "push take failed"),
                }
            }
            tokio::select! {
                _ = stream.wait() => {}
                _ = perch_core::shutdown::stopped(&mut shutdown) => return,
            }
        }
    });
}
