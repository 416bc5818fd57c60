//! Conversions between `google.pubsub.v1` protos and Pub/Sub domain records.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use perch_proto::pubsub as pb;
use perch_store::log::NewMessage;

use crate::Result;
use crate::config::{
    DeadLetterPolicy, PushConfig, PushWrapper, RetryPolicy, SnapshotConfig, SubscriptionConfig,
    TopicConfig,
};
use crate::error::invalid;
use crate::service::{
    EXPIRATION_TTL_DEFAULT_SECONDS, RETRY_MAX_BACKOFF_DEFAULT_MS, RETRY_MIN_BACKOFF_DEFAULT_MS,
};
use crate::subscription::Delivery;

fn duration_seconds(d: &pbjson_types::Duration) -> i64 {
    d.seconds
}

fn duration_ms(d: &pbjson_types::Duration) -> i64 {
    d.seconds * 1000 + i64::from(d.nanos) / 1_000_000
}

fn seconds(s: i64) -> pbjson_types::Duration {
    pbjson_types::Duration {
        seconds: s,
        nanos: 0,
    }
}

fn millis(ms: i64) -> pbjson_types::Duration {
    pbjson_types::Duration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn labels(h: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(crate) fn topic_from_proto(t: &pb::Topic) -> Result<TopicConfig> {
    if !t.kms_key_name.is_empty()
        || t.schema_settings.is_some()
        || t.ingestion_data_source_settings.is_some()
        || !t.message_transforms.is_empty()
    {
        return Err(invalid(
            "KMS keys, schemas, ingestion sources and message transforms are not supported by Perch",
        ));
    }
    Ok(TopicConfig {
        name: t.name.clone(),
        uid: 0,
        labels: labels(&t.labels),
        message_retention_seconds: t.message_retention_duration.as_ref().map(duration_seconds),
    })
}

pub(crate) fn topic_to_proto(t: &TopicConfig) -> pb::Topic {
    pb::Topic {
        name: t.name.clone(),
        labels: t
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        message_retention_duration: t.message_retention_seconds.map(seconds),
        state: pb::topic::State::Active as i32,
        ..Default::default()
    }
}

pub(crate) fn push_from_proto(p: &pb::PushConfig) -> Option<PushConfig> {
    if p.push_endpoint.is_empty() {
        return None;
    }
    let (sa, aud) = match &p.authentication_method {
        Some(pb::push_config::AuthenticationMethod::OidcToken(o)) => (
            Some(o.service_account_email.clone()),
            (!o.audience.is_empty()).then(|| o.audience.clone()),
        ),
        None => (None, None),
    };
    Some(PushConfig {
        endpoint: p.push_endpoint.clone(),
        attributes: labels(&p.attributes),
        wrapper: match p.wrapper {
            Some(pb::push_config::Wrapper::NoWrapper(n)) => PushWrapper::NoWrapper {
                write_metadata: n.write_metadata,
            },
            _ => PushWrapper::Pubsub,
        },
        oidc_service_account: sa,
        oidc_audience: aud,
    })
}

fn push_to_proto(p: &PushConfig) -> pb::PushConfig {
    pb::PushConfig {
        push_endpoint: p.endpoint.clone(),
        attributes: p
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        authentication_method: p.oidc_service_account.as_ref().map(|sa| {
            pb::push_config::AuthenticationMethod::OidcToken(pb::push_config::OidcToken {
                service_account_email: sa.clone(),
                audience: p.oidc_audience.clone().unwrap_or_default(),
            })
        }),
        wrapper: Some(match p.wrapper {
            PushWrapper::Pubsub => {
                pb::push_config::Wrapper::PubsubWrapper(pb::push_config::PubsubWrapper {})
            }
            PushWrapper::NoWrapper { write_metadata } => {
                pb::push_config::Wrapper::NoWrapper(pb::push_config::NoWrapper { write_metadata })
            }
        }),
    }
}

pub(crate) fn subscription_from_proto(s: &pb::Subscription) -> Result<SubscriptionConfig> {
    if s.bigquery_config.is_some()
        || s.cloud_storage_config.is_some()
        || s.bigtable_config.is_some()
        || !s.message_transforms.is_empty()
    {
        return Err(invalid(
            "BigQuery, Cloud Storage and Bigtable subscriptions and message transforms are not supported by Perch",
        ));
    }
    Ok(SubscriptionConfig {
        name: s.name.clone(),
        topic: s.topic.clone(),
        topic_uid: 0,
        uid: 0,
        start_seq: 0,
        push: s.push_config.as_ref().and_then(push_from_proto),
        ack_deadline_seconds: s.ack_deadline_seconds,
        retain_acked_messages: s.retain_acked_messages,
        message_retention_seconds: s
            .message_retention_duration
            .as_ref()
            .map(duration_seconds)
            .unwrap_or(0),
        enable_message_ordering: s.enable_message_ordering,
        expiration_ttl_seconds: match &s.expiration_policy {
            None => Some(EXPIRATION_TTL_DEFAULT_SECONDS),
            Some(p) => p.ttl.as_ref().map(duration_seconds),
        },
        filter: s.filter.clone(),
        dead_letter: s
            .dead_letter_policy
            .as_ref()
            .filter(|d| !d.dead_letter_topic.is_empty())
            .map(|d| DeadLetterPolicy {
                topic: d.dead_letter_topic.clone(),
                max_delivery_attempts: d.max_delivery_attempts,
            }),
        retry: s.retry_policy.map(|r| RetryPolicy {
            minimum_backoff_ms: r
                .minimum_backoff
                .as_ref()
                .map(duration_ms)
                .unwrap_or(RETRY_MIN_BACKOFF_DEFAULT_MS),
            maximum_backoff_ms: r
                .maximum_backoff
                .as_ref()
                .map(duration_ms)
                .unwrap_or(RETRY_MAX_BACKOFF_DEFAULT_MS),
        }),
        detached: s.detached,
        enable_exactly_once_delivery: s.enable_exactly_once_delivery,
        labels: labels(&s.labels),
    })
}

pub(crate) fn subscription_to_proto(
    c: &SubscriptionConfig,
    topic_retention: Option<i64>,
) -> pb::Subscription {
    pb::Subscription {
        name: c.name.clone(),
        topic: c.topic.clone(),
        push_config: Some(c.push.as_ref().map(push_to_proto).unwrap_or_default()),
        ack_deadline_seconds: c.ack_deadline_seconds,
        retain_acked_messages: c.retain_acked_messages,
        message_retention_duration: Some(seconds(c.message_retention_seconds)),
        labels: c
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        enable_message_ordering: c.enable_message_ordering,
        expiration_policy: Some(pb::ExpirationPolicy {
            ttl: c.expiration_ttl_seconds.map(seconds),
        }),
        filter: c.filter.clone(),
        dead_letter_policy: c.dead_letter.as_ref().map(|d| pb::DeadLetterPolicy {
            dead_letter_topic: d.topic.clone(),
            max_delivery_attempts: d.max_delivery_attempts,
        }),
        retry_policy: c.retry.map(|r| pb::RetryPolicy {
            minimum_backoff: Some(millis(r.minimum_backoff_ms)),
            maximum_backoff: Some(millis(r.maximum_backoff_ms)),
        }),
        detached: c.detached,
        enable_exactly_once_delivery: c.enable_exactly_once_delivery,
        topic_message_retention_duration: topic_retention.map(seconds),
        state: pb::subscription::State::Active as i32,
        ..Default::default()
    }
}

pub(crate) fn snapshot_to_proto(s: &SnapshotConfig) -> pb::Snapshot {
    pb::Snapshot {
        name: s.name.clone(),
        topic: s.topic.clone(),
        expire_time: Some(s.expire_time.into()),
        labels: s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub(crate) fn snapshot_update_from_proto(s: &pb::Snapshot) -> Result<SnapshotConfig> {
    Ok(SnapshotConfig {
        name: s.name.clone(),
        topic: s.topic.clone(),
        topic_uid: 0,
        expire_time: s
            .expire_time
            .map(DateTime::<Utc>::try_from)
            .transpose()
            .map_err(|_| invalid("expireTime is not a valid timestamp"))?
            .unwrap_or_default(),
        labels: labels(&s.labels),
        floor: 0,
        acked: Vec::new(),
    })
}

pub(crate) fn message_from_proto(m: pb::PubsubMessage) -> NewMessage {
    NewMessage {
        data: Bytes::from(m.data),
        attributes: m.attributes.into_iter().collect(),
        ordering_key: m.ordering_key,
    }
}

pub(crate) fn received(d: Delivery) -> pb::ReceivedMessage {
    let m = d.message;
    pb::ReceivedMessage {
        ack_id: d.ack_id,
        message: Some(pb::PubsubMessage {
            data: m.message.data.to_vec(),
            attributes: m.message.attributes.into_iter().collect(),
            message_id: m.seq.to_string(),
            publish_time: Some(m.publish_time.into()),
            ordering_key: m.message.ordering_key,
        }),
        delivery_attempt: d.delivery_attempt,
    }
}
