//! Seek to a time or a snapshot, snapshots, and retention by the service's clock.

use super::*;

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
