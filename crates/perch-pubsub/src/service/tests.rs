//! The service on real storage (the embedded log and store in a temporary directory) with a
//! manual clock: resource errors, publish → pull → ack, expiry, nack, dead letters, seek,
//! snapshots and retention.

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

#[tokio::test]
async fn topic_errors_are_already_exists_and_not_found() {
    let f = fixture().await;
    let created = f.service.create_topic(topic("t")).await.unwrap();
    assert_ne!(created.uid, 0);
    assert_eq!(
        code(f.service.create_topic(topic("t")).await),
        ErrorCode::AlreadyExists
    );
    assert_eq!(f.service.get_topic(&topic_name("t")).unwrap(), created);
    let missing = f.service.get_topic(&topic_name("nope")).unwrap_err();
    assert_eq!(missing.code(), ErrorCode::NotFound);
    assert_eq!(
        missing.to_string(),
        "Resource not found (resource=id-nope)."
    );
    assert_eq!(
        code(f.service.get_topic("not/a/topic")),
        ErrorCode::InvalidArgument
    );
    let mut short = topic("short");
    short.message_retention_seconds = Some(RETENTION_MIN_SECONDS - 1);
    assert_eq!(
        code(f.service.create_topic(short).await),
        ErrorCode::InvalidArgument
    );

    let (listed, next) = f.service.list_topics(PROJECT, 0, "").unwrap();
    assert_eq!((listed.len(), next.as_str()), (1, ""));
    f.service.delete_topic(&topic_name("t")).await.unwrap();
    assert_eq!(
        code(f.service.get_topic(&topic_name("t"))),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(f.service.delete_topic(&topic_name("t")).await),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn topics_list_in_pages() {
    let f = fixture().await;
    for id in ["a", "b", "c"] {
        f.service.create_topic(topic(id)).await.unwrap();
    }
    let (first, token) = f.service.list_topics(PROJECT, 2, "").unwrap();
    assert_eq!(first.len(), 2);
    assert!(!token.is_empty());
    let (rest, token) = f.service.list_topics(PROJECT, 2, &token).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].name, topic_name("c"));
    assert!(token.is_empty());
    assert_eq!(
        code(f.service.list_topics(PROJECT, 2, "!!")),
        ErrorCode::InvalidArgument
    );
}

#[tokio::test]
async fn subscription_errors_are_already_exists_and_not_found() {
    let f = fixture().await;
    assert_eq!(
        code(f.service.create_subscription(subscription("s", "t")).await),
        ErrorCode::NotFound
    );
    f.topic_and_subscription().await;
    let got = f.service.get_subscription(&sub_name("s")).unwrap();
    assert_eq!(got.ack_deadline_seconds, ACK_DEADLINE_DEFAULT_SECONDS);
    assert_eq!(got.message_retention_seconds, RETENTION_DEFAULT_SECONDS);
    assert_eq!(
        code(f.service.create_subscription(subscription("s", "t")).await),
        ErrorCode::AlreadyExists
    );
    let mut bad = subscription("bad", "t");
    bad.ack_deadline_seconds = ACK_DEADLINE_MAX_SECONDS + 1;
    assert_eq!(
        code(f.service.create_subscription(bad).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        f.service
            .list_topic_subscriptions(&topic_name("t"), 0, "")
            .unwrap()
            .0,
        vec![sub_name("s")]
    );
    f.service.delete_subscription(&sub_name("s")).await.unwrap();
    assert_eq!(
        code(f.service.get_subscription(&sub_name("s"))),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(f.service.pull(&sub_name("s"), 1, true, None).await),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn an_update_needs_a_mask_that_names_changeable_fields() {
    let f = fixture().await;
    f.topic_and_subscription().await;
    let mut update = subscription("s", "t");
    update.ack_deadline_seconds = 30;
    assert_eq!(
        code(f.service.update_subscription(update.clone(), &[]).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(
            f.service
                .update_subscription(update.clone(), &["filter".into()])
                .await
        ),
        ErrorCode::InvalidArgument
    );
    let updated = f
        .service
        .update_subscription(update, &["ack_deadline_seconds".into()])
        .await
        .unwrap();
    assert_eq!(updated.ack_deadline_seconds, 30);
    assert_eq!(
        code(f.service.update_topic(topic("t"), &[]).await),
        ErrorCode::InvalidArgument
    );
}

#[tokio::test]
async fn deleting_a_topic_keeps_its_subscriptions_on_the_deleted_topic() {
    let f = fixture().await;
    f.topic_and_subscription().await;
    f.publish("t", &["kept"]).await;
    f.service.delete_topic(&topic_name("t")).await.unwrap();
    let sub = f.service.get_subscription(&sub_name("s")).unwrap();
    assert_eq!(sub.topic, crate::names::DELETED_TOPIC);
    assert_eq!(f.pull("s").await.0, vec!["kept"]);
}

#[tokio::test]
async fn publish_checks_request_and_message_limits() {
    let f = fixture().await;
    f.service.create_topic(topic("t")).await.unwrap();
    let t = topic_name("t");
    assert_eq!(
        code(f.service.publish(&t, vec![]).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(f.service.publish(&t, vec![NewMessage::default()]).await),
        ErrorCode::InvalidArgument
    );
    let too_many = vec![message("x"); PUBLISH_MAX_MESSAGES + 1];
    assert_eq!(
        code(f.service.publish(&t, too_many).await),
        ErrorCode::InvalidArgument
    );
    let mut long_key = message("x");
    long_key.ordering_key = "k".repeat(ORDERING_KEY_MAX_BYTES + 1);
    assert_eq!(
        code(f.service.publish(&t, vec![long_key]).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(
            f.service
                .publish(&topic_name("nope"), vec![message("x")])
                .await
        ),
        ErrorCode::NotFound
    );
    assert_eq!(f.publish("t", &["a", "b"]).await, vec!["1", "2"]);
}

#[tokio::test]
async fn published_messages_are_pulled_then_acked_for_good() {
    let f = fixture().await;
    f.topic_and_subscription().await;
    f.publish("t", &["a", "b", "c"]).await;
    let (data, ids) = f.pull("s").await;
    assert_eq!(data, vec!["a", "b", "c"]);
    assert!(
        f.pull("s").await.0.is_empty(),
        "leased messages are not redelivered"
    );
    let refused = f.service.acknowledge(&sub_name("s"), &ids).unwrap();
    assert!(refused.is_empty());
    f.advance(ACK_DEADLINE_DEFAULT_SECONDS as i64 + 1);
    assert!(f.pull("s").await.0.is_empty(), "acked messages stay acked");
    assert_eq!(
        code(f.service.acknowledge(&sub_name("s"), &["garbage".into()])),
        ErrorCode::InvalidArgument
    );
}

#[tokio::test]
async fn an_expired_ack_deadline_redelivers() {
    let f = fixture().await;
    f.topic_and_subscription().await;
    f.publish("t", &["a"]).await;
    assert_eq!(f.pull("s").await.0, vec!["a"]);
    f.advance(ACK_DEADLINE_DEFAULT_SECONDS as i64 - 1);
    assert!(f.pull("s").await.0.is_empty(), "the lease still holds");
    f.advance(2);
    assert_eq!(f.pull("s").await.0, vec!["a"]);
}

#[tokio::test]
async fn a_modified_deadline_extends_the_lease_and_zero_nacks() {
    let f = fixture().await;
    f.topic_and_subscription().await;
    f.publish("t", &["a"]).await;
    let (_, ids) = f.pull("s").await;
    let refused = f
        .service
        .modify_ack_deadline(&sub_name("s"), &ids, 60)
        .unwrap();
    assert!(refused.is_empty());
    f.advance(30);
    assert!(f.pull("s").await.0.is_empty(), "the lease was extended");
    f.service
        .modify_ack_deadline(&sub_name("s"), &ids, 0)
        .unwrap();
    assert_eq!(f.pull("s").await.0, vec!["a"], "a nack redelivers at once");
    assert_eq!(
        code(f.service.modify_ack_deadline(&sub_name("s"), &ids, 601)),
        ErrorCode::InvalidArgument
    );
}

#[tokio::test]
async fn a_message_goes_to_the_dead_letter_topic_after_max_attempts() {
    let f = fixture().await;
    f.service.create_topic(topic("t")).await.unwrap();
    f.service.create_topic(topic("dead")).await.unwrap();
    f.service
        .create_subscription(subscription("dead-sub", "dead"))
        .await
        .unwrap();
    let mut s = subscription("s", "t");
    s.dead_letter = Some(DeadLetterPolicy {
        topic: topic_name("dead"),
        max_delivery_attempts: DEAD_LETTER_ATTEMPTS_MIN,
    });
    f.service.create_subscription(s).await.unwrap();
    f.publish("t", &["poison"]).await;
    for attempt in 1..=DEAD_LETTER_ATTEMPTS_MIN {
        let got = f
            .service
            .pull(&sub_name("s"), 10, true, None)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].delivery_attempt, attempt);
        f.service
            .modify_ack_deadline(&sub_name("s"), &[got[0].ack_id.clone()], 0)
            .unwrap();
    }
    assert!(f.pull("s").await.0.is_empty(), "no sixth delivery");
    let dead = f
        .service
        .pull(&sub_name("dead-sub"), 10, true, None)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let m = &dead[0].message.message;
    assert_eq!(m.data, Bytes::from("poison"));
    assert_eq!(
        m.attributes["CloudPubSubDeadLetterSourceDeliveryCount"],
        DEAD_LETTER_ATTEMPTS_MIN.to_string()
    );
    assert_eq!(
        m.attributes["CloudPubSubDeadLetterSourceSubscription"],
        "id-s"
    );
    assert_eq!(
        m.attributes["CloudPubSubDeadLetterSourceSubscriptionProject"],
        PROJECT
    );
}

#[tokio::test]
async fn a_dead_letter_topic_must_exist() {
    let f = fixture().await;
    f.service.create_topic(topic("t")).await.unwrap();
    let mut s = subscription("s", "t");
    s.dead_letter = Some(DeadLetterPolicy {
        topic: topic_name("missing"),
        max_delivery_attempts: 0,
    });
    assert_eq!(
        code(f.service.create_subscription(s).await),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn seek_to_a_time_before_publishing_redelivers_acked_messages() {
    let f = fixture().await;
    f.topic_and_subscription().await;
    let before = Utc::now() - chrono::Duration::seconds(60);
    f.publish("t", &["a", "b"]).await;
    let (_, ids) = f.pull("s").await;
    f.service.acknowledge(&sub_name("s"), &ids).unwrap();
    f.service
        .seek_to_time(&sub_name("s"), before)
        .await
        .unwrap();
    assert_eq!(f.pull("s").await.0, vec!["a", "b"]);
    f.service
        .seek_to_time(&sub_name("s"), Utc::now() + chrono::Duration::seconds(60))
        .await
        .unwrap();
    assert!(
        f.pull("s").await.0.is_empty(),
        "a seek to the future acks all"
    );
}

#[tokio::test]
async fn a_snapshot_restores_the_acks_of_when_it_was_taken() {
    let f = fixture().await;
    f.topic_and_subscription().await;
    f.publish("t", &["a", "b"]).await;
    let (_, ids) = f.pull("s").await;
    f.service.acknowledge(&sub_name("s"), &ids[..1]).unwrap();
    let snap = f
        .service
        .create_snapshot(&snapshot_name("snap"), &sub_name("s"), BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(snap.topic, topic_name("t"));
    assert_eq!(snap.expire_time, f.clock.now() + SNAPSHOT_MAX_AGE);
    assert_eq!(
        code(
            f.service
                .create_snapshot(&snapshot_name("snap"), &sub_name("s"), BTreeMap::new())
                .await
        ),
        ErrorCode::AlreadyExists
    );
    f.service.acknowledge(&sub_name("s"), &ids[1..]).unwrap();
    f.service
        .seek_to_snapshot(&sub_name("s"), &snapshot_name("snap"))
        .await
        .unwrap();
    assert_eq!(f.pull("s").await.0, vec!["b"]);
    assert_eq!(
        f.service
            .list_topic_snapshots(&topic_name("t"), 0, "")
            .unwrap()
            .0,
        vec![snapshot_name("snap")]
    );
    assert_eq!(
        code(
            f.service
                .seek_to_snapshot(&sub_name("s"), &snapshot_name("nope"))
                .await
        ),
        ErrorCode::NotFound
    );
    f.service
        .delete_snapshot(&snapshot_name("snap"))
        .await
        .unwrap();
    assert_eq!(
        code(f.service.get_snapshot(&snapshot_name("snap"))),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn retention_expires_snapshots_by_the_service_clock() {
    let f = fixture().await;
    f.topic_and_subscription().await;
    f.service
        .create_snapshot(&snapshot_name("snap"), &sub_name("s"), BTreeMap::new())
        .await
        .unwrap();
    f.service.apply_retention().await.unwrap();
    assert!(f.service.get_snapshot(&snapshot_name("snap")).is_ok());
    f.advance(SNAPSHOT_MAX_AGE.num_seconds() + 1);
    f.service.apply_retention().await.unwrap();
    assert_eq!(
        code(f.service.get_snapshot(&snapshot_name("snap"))),
        ErrorCode::NotFound
    );
}

/// Enough 1 KB messages to fill several minimum-size log segments.
async fn publish_segments(f: &Fixture) {
    let data = "x".repeat(1000);
    for _ in 0..4 {
        f.publish("t", &[&data, &data, &data, &data, &data]).await;
    }
}

#[tokio::test]
async fn retention_drops_acked_segments_and_keeps_unacked_ones() {
    let f = fixture().await;
    f.topic_and_subscription().await;
    let uid = f.service.get_topic(&topic_name("t")).unwrap().uid;
    publish_segments(&f).await;
    f.service.apply_retention().await.unwrap();
    assert_eq!(f.log.first_seq(uid).unwrap(), 1, "nothing is acked yet");
    let (_, ids) = f.pull("s").await;
    f.service.acknowledge(&sub_name("s"), &ids).unwrap();
    f.service.apply_retention().await.unwrap();
    assert!(f.log.first_seq(uid).unwrap() > 1, "acked segments go");
}

#[tokio::test]
async fn retention_drops_unacked_messages_older_than_the_subscription_keeps() {
    let f = fixture().await;
    f.topic_and_subscription().await;
    let uid = f.service.get_topic(&topic_name("t")).unwrap().uid;
    publish_segments(&f).await;
    f.advance(RETENTION_DEFAULT_SECONDS + 1);
    f.service.apply_retention().await.unwrap();
    assert!(f.log.first_seq(uid).unwrap() > 1, "expired segments go");
}

#[tokio::test]
async fn a_deleted_topic_stream_is_removed_once_nothing_refers_to_it() {
    let f = fixture().await;
    let uid = f.service.create_topic(topic("t")).await.unwrap().uid;
    f.publish("t", &["a"]).await;
    f.service.delete_topic(&topic_name("t")).await.unwrap();
    assert!(f.log.streams().contains(&uid));
    f.service.apply_retention().await.unwrap();
    assert!(!f.log.streams().contains(&uid));
}

#[tokio::test]
async fn a_detached_subscription_refuses_pulls() {
    let f = fixture().await;
    f.topic_and_subscription().await;
    f.publish("t", &["a"]).await;
    f.service.detach_subscription(&sub_name("s")).await.unwrap();
    assert_eq!(
        code(f.service.pull(&sub_name("s"), 1, true, None).await),
        ErrorCode::FailedPrecondition
    );
}

#[tokio::test]
async fn a_dropped_stream_returns_its_leases() {
    let f = fixture().await;
    f.topic_and_subscription().await;
    f.publish("t", &["a"]).await;
    let stream = f.service.open_stream(&sub_name("s")).unwrap();
    let got = stream
        .take(10, usize::MAX, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(stream.outstanding().0, 1);
    assert!(f.pull("s").await.0.is_empty());
    drop(stream);
    assert_eq!(f.pull("s").await.0, vec!["a"]);
}

/// Opens a service on `dir`, waiting (up to 5 s) for an earlier one's tasks to let go of it.
async fn reopen(dir: &std::path::Path) -> (PubsubService, watch::Sender<bool>) {
    crypto();
    let mut tries = 0;
    let store = loop {
        match EmbeddedPubsubStore::open(&dir.join("pubsub.redb")) {
            Ok(store) => break store,
            Err(_) if tries < 250 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen the store: {e}"),
        }
    };
    let log = SegmentLog::open_with(&dir.join("log"), SEGMENT_MIN_BYTES).unwrap();
    let (stop, shutdown) = watch::channel(false);
    let service = PubsubService::open(
        Arc::new(log),
        Arc::new(store),
        PubsubOptions::default(),
        shutdown,
    )
    .await
    .unwrap();
    (service, stop)
}

#[tokio::test]
async fn acks_survive_a_restart_once_flushed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (service, stop) = reopen(dir.path()).await;
        service.create_topic(topic("t")).await.unwrap();
        service
            .create_subscription(subscription("s", "t"))
            .await
            .unwrap();
        service
            .publish(&topic_name("t"), vec![message("a"), message("b")])
            .await
            .unwrap();
        let got = service.pull(&sub_name("s"), 1, true, None).await.unwrap();
        service
            .acknowledge(&sub_name("s"), &[got[0].ack_id.clone()])
            .unwrap();
        service.persist_acks().await.unwrap();
        stop.send(true).unwrap();
    }
    let (service, _stop) = reopen(dir.path()).await;
    let got = service.pull(&sub_name("s"), 10, true, None).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message.message.data, Bytes::from("b"));
}
