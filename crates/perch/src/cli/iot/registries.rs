//! `perch iot registries …`: create, describe, list, update and delete device registries.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::{list_all, parse_pairs, read_file};
use crate::cli::ClientArgs;
use crate::cli::client::AdminClient;
use crate::cli::names::{location_path, registry_name, topic_name};
use crate::cli::output::{cell, print_list, print_one};

#[derive(Debug, Args)]
pub struct RegistrySettings {
    /// Route telemetry to a topic: topic=T[,subfolder=S] (first match wins; no subfolder = default)
    #[arg(long = "event-notification-config")]
    event_notification_configs: Vec<String>,
    /// Topic that receives device state reports
    #[arg(long)]
    state_pubsub_topic: Option<String>,
    /// Accept MQTT connections
    #[arg(long, overrides_with = "no_enable_mqtt_config")]
    enable_mqtt_config: bool,
    /// Refuse MQTT connections
    #[arg(long)]
    no_enable_mqtt_config: bool,
    /// Accept HTTP bridge requests
    #[arg(long, overrides_with = "no_enable_http_config")]
    enable_http_config: bool,
    /// Refuse HTTP bridge requests
    #[arg(long)]
    no_enable_http_config: bool,
    /// A CA certificate (PEM) that device certificates must be signed by; repeatable
    #[arg(long = "public-key-path")]
    ca_certificates: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RegistriesCommand {
    /// Create a registry
    Create {
        registry: String,
        #[arg(long)]
        region: String,
        #[command(flatten)]
        settings: RegistrySettings,
    },
    /// Show a registry
    Describe {
        registry: String,
        #[arg(long)]
        region: String,
    },
    /// List the registries of a region
    List {
        #[arg(long)]
        region: String,
        /// Stop after this many
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Change a registry's settings
    Update {
        registry: String,
        #[arg(long)]
        region: String,
        #[command(flatten)]
        settings: RegistrySettings,
    },
    /// Delete an empty registry
    Delete {
        registry: String,
        #[arg(long)]
        region: String,
    },
}

/// The registry body and update mask the settings flags describe.
pub(super) fn registry_body(
    project: &str,
    s: &RegistrySettings,
) -> Result<(Value, Vec<&'static str>)> {
    let mut body = json!({});
    let mut mask = Vec::new();
    if !s.event_notification_configs.is_empty() {
        let mut configs = Vec::new();
        for spec in &s.event_notification_configs {
            let mut topic = None;
            let mut subfolder = None;
            for (k, v) in parse_pairs("event-notification-config", spec)? {
                match k.as_str() {
                    "topic" => topic = Some(v),
                    "subfolder" => subfolder = Some(v),
                    other => bail!(
                        "--event-notification-config has no key '{other}'; use topic=T[,subfolder=S]"
                    ),
                }
            }
            let topic = topic.context("--event-notification-config needs topic=T")?;
            let mut config = json!({ "pubsubTopicName": topic_name(project, &topic) });
            if let Some(s) = subfolder {
                config["subfolderMatches"] = s.into();
            }
            configs.push(config);
        }
        // IoT Core stores configs in the given order and the first match wins, so a catch-all
        // given before a subfolder entry would shadow it: keep the user's order.
        body["eventNotificationConfigs"] = configs.into();
        mask.push("eventNotificationConfigs");
    }
    if let Some(t) = &s.state_pubsub_topic {
        body["stateNotificationConfig"] = json!({ "pubsubTopicName": topic_name(project, t) });
        mask.push("stateNotificationConfig");
    }
    let protocols = [
        (
            s.enable_mqtt_config,
            s.no_enable_mqtt_config,
            "mqttConfig",
            "mqttEnabledState",
            "MQTT",
        ),
        (
            s.enable_http_config,
            s.no_enable_http_config,
            "httpConfig",
            "httpEnabledState",
            "HTTP",
        ),
    ];
    for (enable, disable, field, key, protocol) in protocols {
        if enable || disable {
            let state = if disable { "DISABLED" } else { "ENABLED" };
            body[field] = json!({ key: format!("{protocol}_{state}") });
            mask.push(field);
        }
    }
    if !s.ca_certificates.is_empty() {
        let certs: Result<Vec<Value>> = s
            .ca_certificates
            .iter()
            .map(|p| Ok(json!({ "publicKeyCertificate": { "format": "X509_CERTIFICATE_PEM", "certificate": read_file(p, "CA certificate")? } })))
            .collect();
        body["credentials"] = certs?.into();
        mask.push("credentials");
    }
    Ok((body, mask))
}

pub(super) fn enabled(value: &Value, state: &str) -> String {
    if value.as_str().is_some_and(|s| s.ends_with("_DISABLED")) {
        "false".into()
    } else {
        let _ = state;
        "true".into()
    }
}

pub(super) async fn registries(c: &ClientArgs, cmd: RegistriesCommand) -> Result<()> {
    let client = AdminClient::new(c)?;
    match cmd {
        RegistriesCommand::Create {
            registry,
            region,
            settings,
        } => {
            let (mut body, _) = registry_body(&c.project, &settings)?;
            body["id"] = registry.into();
            let created = client
                .call(
                    Method::POST,
                    &format!("{}/registries", location_path(&c.project, &region)),
                    &[],
                    Some(&body),
                )
                .await?;
            print_one(c.format, &created);
        }
        RegistriesCommand::Describe { registry, region } => {
            let r = client
                .call(
                    Method::GET,
                    &registry_name(&c.project, &region, &registry),
                    &[],
                    None,
                )
                .await?;
            print_one(c.format, &r);
        }
        RegistriesCommand::List { region, limit } => {
            let items = list_all(
                &client,
                &format!("{}/registries", location_path(&c.project, &region)),
                "deviceRegistries",
                vec![],
                limit,
            )
            .await?;
            print_list(
                c.format,
                &items,
                &["ID", "LOCATION", "MQTT_ENABLED", "HTTP_ENABLED"],
                |r| {
                    vec![
                        cell(&r["id"]),
                        region.clone(),
                        enabled(&r["mqttConfig"]["mqttEnabledState"], "MQTT"),
                        enabled(&r["httpConfig"]["httpEnabledState"], "HTTP"),
                    ]
                },
            )?
        }
        RegistriesCommand::Update {
            registry,
            region,
            settings,
        } => {
            let (body, mask) = registry_body(&c.project, &settings)?;
            if mask.is_empty() {
                bail!(
                    "nothing to update; pass --event-notification-config, --state-pubsub-topic, --[no-]enable-mqtt-config, --[no-]enable-http-config or --public-key-path"
                );
            }
            let r = client
                .call(
                    Method::PATCH,
                    &registry_name(&c.project, &region, &registry),
                    &[("updateMask", mask.join(","))],
                    Some(&body),
                )
                .await?;
            print_one(c.format, &r);
        }
        RegistriesCommand::Delete { registry, region } => {
            client
                .call(
                    Method::DELETE,
                    &registry_name(&c.project, &region, &registry),
                    &[],
                    None,
                )
                .await?;
            eprintln!("Deleted registry [{registry}].");
        }
    }
    Ok(())
}
