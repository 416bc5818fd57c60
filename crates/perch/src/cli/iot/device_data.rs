//! `perch iot devices configs|states|commands …`: what flows between the cloud and a device.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::ClientArgs;
use crate::cli::client::AdminClient;
use crate::cli::names::{RegistryRef, device_path};
use crate::cli::output::{cell, print_list, print_one};

#[derive(Debug, Subcommand)]
pub enum ConfigsCommand {
    /// Set a new config version
    Update {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        /// File whose bytes become the config
        #[arg(long, conflicts_with = "config_data")]
        config_file: Option<PathBuf>,
        /// Text that becomes the config
        #[arg(long)]
        config_data: Option<String>,
        /// Only if the current version is this one (0 = unconditional)
        #[arg(long, default_value_t = 0)]
        version_to_update: i64,
    },
    /// List config versions, newest first
    List {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
pub enum StatesCommand {
    /// List state reports, newest first
    List {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CommandsCommand {
    /// Send a command to a connected device
    Send {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long)]
        command_data: String,
        #[arg(long)]
        subfolder: Option<String>,
    },
}

/// Base64 data shown as text when it is UTF-8, else as base64.
pub(super) fn printable(value: &Value) -> String {
    let b64 = value.as_str().unwrap_or("");
    match STANDARD
        .decode(b64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    {
        Some(text) if !text.chars().any(char::is_control) => text,
        _ => b64.to_owned(),
    }
}

/// `devices configs update|list`.
pub(super) async fn configs(
    c: &ClientArgs,
    client: &AdminClient,
    cmd: ConfigsCommand,
) -> Result<()> {
    let p = &c.project;
    match cmd {
        ConfigsCommand::Update {
            device,
            registry,
            config_file,
            config_data,
            version_to_update,
        } => {
            let data = match (config_file, config_data) {
                (Some(f), None) => std::fs::read(&f)
                    .with_context(|| format!("cannot read the config file {}", f.display()))?,
                (None, Some(d)) => d.into_bytes(),
                _ => bail!("pass exactly one of --config-file or --config-data"),
            };
            let body = json!({ "versionToUpdate": version_to_update.to_string(), "binaryData": STANDARD.encode(data) });
            let config = client
                .call(
                    Method::POST,
                    &format!(
                        "{}:modifyCloudToDeviceConfig",
                        device_path(p, &registry, &device)
                    ),
                    &[],
                    Some(&body),
                )
                .await?;
            print_one(c.format, &config);
            Ok(())
        }
        ConfigsCommand::List {
            device,
            registry,
            limit,
        } => {
            let query = vec![("numVersions", limit.unwrap_or(0).to_string())];
            let r = client
                .call(
                    Method::GET,
                    &format!("{}/configVersions", device_path(p, &registry, &device)),
                    &query,
                    None,
                )
                .await?;
            let configs = r["deviceConfigs"].as_array().cloned().unwrap_or_default();
            print_list(
                c.format,
                &configs,
                &["VERSION", "CLOUD_UPDATE_TIME", "DEVICE_ACK_TIME", "DATA"],
                |cfg| {
                    vec![
                        cell(&cfg["version"]),
                        cell(&cfg["cloudUpdateTime"]),
                        cell(&cfg["deviceAckTime"]),
                        printable(&cfg["binaryData"]),
                    ]
                },
            )
        }
    }
}

/// `devices states list`.
pub(super) async fn states(c: &ClientArgs, client: &AdminClient, cmd: StatesCommand) -> Result<()> {
    let StatesCommand::List {
        device,
        registry,
        limit,
    } = cmd;
    let query = vec![("numStates", limit.unwrap_or(0).to_string())];
    let r = client
        .call(
            Method::GET,
            &format!("{}/states", device_path(&c.project, &registry, &device)),
            &query,
            None,
        )
        .await?;
    let states = r["deviceStates"].as_array().cloned().unwrap_or_default();
    print_list(c.format, &states, &["UPDATE_TIME", "DATA"], |s| {
        vec![cell(&s["updateTime"]), printable(&s["binaryData"])]
    })
}

/// `devices commands send`.
pub(super) async fn commands(
    c: &ClientArgs,
    client: &AdminClient,
    cmd: CommandsCommand,
) -> Result<()> {
    let CommandsCommand::Send {
        device,
        registry,
        command_data,
        subfolder,
    } = cmd;
    let mut body = json!({ "binaryData": STANDARD.encode(command_data) });
    if let Some(s) = subfolder {
        body["subfolder"] = s.into();
    }
    client
        .call(
            Method::POST,
            &format!(
                "{}:sendCommandToDevice",
                device_path(&c.project, &registry, &device)
            ),
            &[],
            Some(&body),
        )
        .await?;
    eprintln!("Command sent to [{device}].");
    Ok(())
}
