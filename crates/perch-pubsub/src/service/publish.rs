//! Publishing: request and message limits, then a durable append to the topic's stream.

use perch_store::log::NewMessage;

use super::{
    ATTRIBUTE_KEY_MAX_BYTES, ATTRIBUTE_VALUE_MAX_BYTES, ATTRIBUTES_MAX, MESSAGE_MAX_BYTES,
    ORDERING_KEY_MAX_BYTES, PUBLISH_MAX_BYTES, PUBLISH_MAX_MESSAGES, Published, PubsubService,
};
use crate::Result;
use crate::error::invalid;

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

impl PubsubService {
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
}
