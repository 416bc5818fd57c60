//! The service on real storage (the embedded log and store in a temporary directory) with a
//! manual clock: resources and their errors (`resources`), publish → pull → ack, expiry, nacks,
//! dead letters and streams (`delivery`), seek, snapshots and retention (`seek`).

mod delivery;
mod resources;
mod seek;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use perch_core::{ErrorCode, ManualClock};
use perch_store::embedded::{EmbeddedPubsubStore, SEGMENT_MIN_BYTES, SegmentLog};
use perch_store::log::{MessageLog, NewMessage};
use tokio::sync::watch;

use super::*;
use crate::config::DeadLetterPolicy;

const PROJECT: &str = "p";

struct Fixture {
    service: PubsubService,
    clock: Arc<ManualClock>,
    log: Arc<SegmentLog>,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// Installs the crypto provider the push client's TLS needs (the binary does it in `main`).
fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn fixture() -> Fixture {
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SegmentLog::open_with(&dir.path().join("log"), SEGMENT_MIN_BYTES).unwrap());
    let store = EmbeddedPubsubStore::open(&dir.path().join("pubsub.redb")).unwrap();
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let (stop, shutdown) = watch::channel(false);
    let options = PubsubOptions {
        clock: clock.clone(),
        // Retention runs only when a test asks.
        housekeeping_interval: Duration::from_secs(24 * 3600),
        ..PubsubOptions::default()
    };
    let service = PubsubService::open(log.clone(), Arc::new(store), options, shutdown)
        .await
        .unwrap();
    Fixture {
        service,
        clock,
        log,
        _stop: stop,
        _dir: dir,
    }
}

/// Resource ids need three characters; tests name them by one letter, behind `id-`.
fn topic_name(id: &str) -> String {
    format!("projects/{PROJECT}/topics/id-{id}")
}

fn sub_name(id: &str) -> String {
    format!("projects/{PROJECT}/subscriptions/id-{id}")
}

fn snapshot_name(id: &str) -> String {
    format!("projects/{PROJECT}/snapshots/id-{id}")
}

fn topic(id: &str) -> TopicConfig {
    TopicConfig {
        name: topic_name(id),
        uid: 0,
        labels: BTreeMap::new(),
        message_retention_seconds: None,
    }
}

/// A pull subscription with Google's defaults (filled in at create).
fn subscription(id: &str, topic: &str) -> SubscriptionConfig {
    SubscriptionConfig {
        name: sub_name(id),
        topic: topic_name(topic),
        topic_uid: 0,
        uid: 0,
        start_seq: 0,
        push: None,
        ack_deadline_seconds: 0,
        retain_acked_messages: false,
        message_retention_seconds: 0,
        enable_message_ordering: false,
        expiration_ttl_seconds: None,
        filter: String::new(),
        dead_letter: None,
        retry: None,
        detached: false,
        enable_exactly_once_delivery: false,
        labels: BTreeMap::new(),
    }
}

fn message(data: &str) -> NewMessage {
    NewMessage {
        data: Bytes::from(data.to_owned()),
        ..NewMessage::default()
    }
}

impl Fixture {
    /// A topic `t` with a subscription `s`.
    async fn topic_and_subscription(&self) {
        self.service.create_topic(topic("t")).await.unwrap();
        self.service
            .create_subscription(subscription("s", "t"))
            .await
            .unwrap();
    }

    async fn publish(&self, topic: &str, data: &[&str]) -> Vec<String> {
        let messages = data.iter().map(|d| message(d)).collect();
        self.service
            .publish(&topic_name(topic), messages)
            .await
            .unwrap()
            .message_ids
    }

    /// Pulls without waiting; returns the deliveries' data and ack ids.
    async fn pull(&self, sub: &str) -> (Vec<String>, Vec<String>) {
        let got = self
            .service
            .pull(&sub_name(sub), 100, true, None)
            .await
            .unwrap();
        (
            got.iter()
                .map(|d| String::from_utf8_lossy(&d.message.message.data).into_owned())
                .collect(),
            got.into_iter().map(|d| d.ack_id).collect(),
        )
    }

    fn advance(&self, seconds: i64) {
        self.clock.advance(chrono::Duration::seconds(seconds));
    }
}

fn code<T: std::fmt::Debug>(r: Result<T>) -> ErrorCode {
    r.unwrap_err().code()
}
