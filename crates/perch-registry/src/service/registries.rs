//! Registries: create, get, list, update (by mask) and delete, with the checks of their
//! notification topics, subfolder matches and CA certificates.

use perch_core::limits::{
    EVENT_NOTIFICATION_CONFIGS_MAX, REGISTRY_CREDENTIALS_MAX, SUBFOLDER_MATCHES_MAX_BYTES,
};
use perch_core::model::{EventNotificationConfig, Registry, RegistryCredential};
use perch_core::{LocationName, RegistryName, Rejection};

use super::{RegistryPatch, RegistryService, RegistryUpdateField, clamp_page_size, mask_fields};
use crate::events::RegistryEvent;
use crate::{Result, keys, page};

fn is_valid_topic_name(name: &str) -> bool {
    matches!(name.split('/').collect::<Vec<_>>()[..],
        ["projects", p, "topics", t] if !p.is_empty() && !t.is_empty())
}

fn check_topic(field: &str, name: &str) -> Result<(), Rejection> {
    if is_valid_topic_name(name) {
        Ok(())
    } else {
        Err(Rejection::invalid_argument(format!(
            "'{field}' must be a Pub/Sub topic name 'projects/{{project}}/topics/{{topic}}', got '{name}'"
        )))
    }
}

fn is_valid_subfolder_match(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b.len() <= SUBFOLDER_MATCHES_MAX_BYTES
        && b[0].is_ascii_alphabetic()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-._+~%".contains(c))
}

fn check_event_configs(configs: &[EventNotificationConfig]) -> Result<(), Rejection> {
    if configs.len() > EVENT_NOTIFICATION_CONFIGS_MAX {
        return Err(Rejection::invalid_argument(format!(
            "a registry has at most {EVENT_NOTIFICATION_CONFIGS_MAX} event notification configs, got {}",
            configs.len()
        )));
    }
    for config in configs {
        check_topic(
            "eventNotificationConfigs.pubsubTopicName",
            &config.pubsub_topic_name,
        )?;
        if !config.subfolder_matches.is_empty()
            && !is_valid_subfolder_match(&config.subfolder_matches)
        {
            return Err(Rejection::invalid_argument(format!(
                "the subfolderMatches '{}' is invalid; it starts with a letter, has letters, digits and -._+~%, and at most {SUBFOLDER_MATCHES_MAX_BYTES} bytes",
                config.subfolder_matches
            )));
        }
    }
    Ok(())
}

fn parse_registry_credentials(pems: &[String]) -> Result<Vec<RegistryCredential>, Rejection> {
    if pems.len() > REGISTRY_CREDENTIALS_MAX {
        return Err(Rejection::invalid_argument(format!(
            "a registry has at most {REGISTRY_CREDENTIALS_MAX} CA certificates, got {}",
            pems.len()
        )));
    }
    pems.iter()
        .map(|pem| {
            Ok(RegistryCredential {
                details: keys::parse_registry_certificate(pem)?,
                certificate_pem: pem.clone(),
            })
        })
        .collect()
}

impl RegistryService {
    /// Creates a registry under `parent`; `registry.project`/`location` are taken from `parent`.
    pub async fn create_registry(
        &self,
        parent: &LocationName,
        mut registry: Registry,
    ) -> Result<Registry> {
        self.check_location(parent)?;
        registry.project = parent.project.clone();
        registry.location = parent.location.clone();
        check_event_configs(&registry.event_notification_configs)?;
        if !registry.state_notification_topic.is_empty() {
            check_topic(
                "stateNotificationConfig.pubsubTopicName",
                &registry.state_notification_topic,
            )?;
        }
        let pems: Vec<String> = registry
            .credentials
            .iter()
            .map(|c| c.certificate_pem.clone())
            .collect();
        registry.credentials = parse_registry_credentials(&pems)?;
        Ok(self.store.create_registry(registry).await?)
    }

    pub async fn get_registry(&self, name: &RegistryName) -> Result<Registry> {
        self.check_location(&name.location())?;
        Ok(self.store.get_registry(name).await?)
    }

    /// A page of registries and the token for the next one (empty at the end).
    pub async fn list_registries(
        &self,
        parent: &LocationName,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<Registry>, String)> {
        self.check_location(parent)?;
        let query = page::fingerprint(&[&parent.to_string()]);
        let after = page::decode(page_token, &query)?;
        let limit = clamp_page_size(page_size);
        let mut registries = self.store.list_registries(parent, after, limit + 1).await?;
        let next = page::next_token(&mut registries, limit, |r| r.id.as_str(), &query);
        Ok((registries, next))
    }

    pub async fn update_registry(
        &self,
        name: &RegistryName,
        patch: RegistryPatch,
        mask: &[String],
    ) -> Result<Registry> {
        self.check_location(&name.location())?;
        let fields = mask_fields(mask, RegistryUpdateField::parse)?;
        for field in &fields {
            match field {
                RegistryUpdateField::EventNotificationConfigs => {
                    check_event_configs(&patch.event_notification_configs)?
                }
                RegistryUpdateField::StateNotificationConfig
                    if !patch.state_notification_topic.is_empty() =>
                {
                    check_topic(
                        "stateNotificationConfig.pubsubTopicName",
                        &patch.state_notification_topic,
                    )?
                }
                _ => {}
            }
        }
        let credentials = if fields.contains(&RegistryUpdateField::Credentials) {
            parse_registry_credentials(&patch.credentials)?
        } else {
            Vec::new()
        };
        let update = Box::new(move |registry: &mut Registry| {
            for field in fields {
                match field {
                    RegistryUpdateField::EventNotificationConfigs => {
                        registry.event_notification_configs =
                            patch.event_notification_configs.clone()
                    }
                    RegistryUpdateField::StateNotificationConfig => {
                        registry.state_notification_topic = patch.state_notification_topic.clone()
                    }
                    RegistryUpdateField::MqttConfig => registry.mqtt_state = patch.mqtt_state,
                    RegistryUpdateField::HttpConfig => registry.http_state = patch.http_state,
                    RegistryUpdateField::Credentials => registry.credentials = credentials.clone(),
                    RegistryUpdateField::LogLevel => registry.log_level = patch.log_level,
                }
            }
            Ok(())
        });
        let registry = self.store.update_registry(name, update).await?;
        self.emit(RegistryEvent::RegistryChanged {
            registry: Box::new(registry.clone()),
        });
        Ok(registry)
    }

    pub async fn delete_registry(&self, name: &RegistryName) -> Result<()> {
        self.check_location(&name.location())?;
        self.store.delete_registry(name).await?;
        self.emit(RegistryEvent::RegistryDeleted { name: name.clone() });
        Ok(())
    }
}
