//! Publish → pull → ack, ack deadlines and nacks, dead letters, detach, streams, restart.

use super::*;

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
