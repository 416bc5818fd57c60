//! Topics, subscriptions, updates and publish limits, and the errors they answer with.

use super::*;

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
