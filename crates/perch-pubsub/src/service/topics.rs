//! Topics: create, get, list, update and delete, and the names of a topic's subscriptions and
//! snapshots.

use std::sync::Arc;

use perch_store::pubsub::ResourceKind;

use super::{
    PubsubService, Subscription, check_mask, check_retention, encode, page, poisoned, random_uid,
};
use crate::config::TopicConfig;
use crate::error::{invalid, not_found};
use crate::names::{self, DELETED_TOPIC};
use crate::{Error, Result};

impl PubsubService {
    pub async fn create_topic(&self, mut topic: TopicConfig) -> Result<TopicConfig> {
        names::topic(&topic.name)?;
        if let Some(r) = topic.message_retention_seconds {
            check_retention(r)?;
        }
        topic.uid = random_uid();
        self.inner
            .creating
            .lock()
            .map_err(poisoned)?
            .insert(topic.uid);
        let created = async {
            self.inner
                .store
                .put_resource(ResourceKind::Topic, &topic.name, encode(&topic)?, true)
                .await?;
            self.inner.log.create_stream(topic.uid).await?;
            self.inner
                .topics
                .write()
                .map_err(poisoned)?
                .insert(topic.name.clone(), topic.clone());
            Ok::<(), Error>(())
        }
        .await;
        self.inner
            .creating
            .lock()
            .map_err(poisoned)?
            .remove(&topic.uid);
        created?;
        tracing::debug!(topic = %topic.name, "topic created");
        Ok(topic)
    }

    pub fn get_topic(&self, name: &str) -> Result<TopicConfig> {
        names::topic(name)?;
        self.inner
            .topics
            .read()
            .map_err(poisoned)?
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    pub fn list_topics(
        &self,
        project: &str,
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<TopicConfig>, String)> {
        page(
            &*self.inner.topics.read().map_err(poisoned)?,
            &format!("projects/{project}/topics/"),
            page_size,
            token,
            |_| true,
        )
    }

    pub async fn update_topic(&self, update: TopicConfig, mask: &[String]) -> Result<TopicConfig> {
        let mut topic = self.get_topic(&update.name)?;
        check_mask(mask)?;
        for path in mask {
            match path.as_str() {
                "labels" => topic.labels = update.labels.clone(),
                "message_retention_duration" => {
                    if let Some(r) = update.message_retention_seconds {
                        check_retention(r)?;
                    }
                    topic.message_retention_seconds = update.message_retention_seconds;
                }
                other => {
                    return Err(invalid(format!(
                        "the update mask path '{other}' cannot be changed on a topic; use labels or message_retention_duration"
                    )));
                }
            }
        }
        self.put_resource(
            ResourceKind::Topic,
            &self.inner.topics,
            &topic.name,
            &topic,
            false,
        )
        .await?;
        Ok(topic)
    }

    /// Deletes a topic; its subscriptions stay, now naming `_deleted-topic_`, and keep their
    /// backlog (the stream is removed once nothing refers to it).
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.get_topic(name)?;
        self.inner
            .store
            .delete_resource(ResourceKind::Topic, name)
            .await?;
        self.inner.topics.write().map_err(poisoned)?.remove(name);
        let orphans: Vec<Arc<Subscription>> = self
            .inner
            .subscriptions
            .read()
            .map_err(poisoned)?
            .values()
            .filter(|s| s.config.read().map(|c| c.topic == name).unwrap_or(false))
            .cloned()
            .collect();
        for sub in orphans {
            let c = {
                let mut c = sub.config.write().map_err(poisoned)?;
                c.topic = DELETED_TOPIC.to_owned();
                c.clone()
            };
            self.inner
                .store
                .put_resource(ResourceKind::Subscription, &c.name, encode(&c)?, false)
                .await?;
        }
        Ok(())
    }

    pub fn list_topic_subscriptions(
        &self,
        topic: &str,
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<String>, String)> {
        self.get_topic(topic)?;
        let subs = self.inner.subscriptions.read().map_err(poisoned)?;
        let (items, next) = page(&subs, "projects/", page_size, token, |s| {
            s.config.read().map(|c| c.topic == topic).unwrap_or(false)
        })?;
        Ok((
            items
                .iter()
                .filter_map(|s| s.config.read().ok().map(|c| c.name.clone()))
                .collect(),
            next,
        ))
    }

    pub fn list_topic_snapshots(
        &self,
        topic: &str,
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<String>, String)> {
        self.get_topic(topic)?;
        let snaps = self.inner.snapshots.read().map_err(poisoned)?;
        let (items, next) = page(&snaps, "projects/", page_size, token, |s| s.topic == topic)?;
        Ok((items.into_iter().map(|s| s.name).collect(), next))
    }
}
