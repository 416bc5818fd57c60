//! `perch iot devices create|describe|list|update|delete`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use super::credentials::{CredentialsCommand, credentials, public_key_credential};
use super::device_data::{
    CommandsCommand, ConfigsCommand, StatesCommand, commands, configs, states,
};
use super::{list_all, parse_pairs};
use crate::cli::ClientArgs;
use crate::cli::client::AdminClient;
use crate::cli::names::{RegistryRef, device_path, registry_path};
use crate::cli::output::{cell, print_list, print_one};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceType {
    Gateway,
    NonGateway,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AuthMethod {
    AssociationOnly,
    DeviceAuthTokenOnly,
    AssociationAndDeviceAuthToken,
}

impl AuthMethod {
    fn proto_name(self) -> &'static str {
        match self {
            AuthMethod::AssociationOnly => "ASSOCIATION_ONLY",
            AuthMethod::DeviceAuthTokenOnly => "DEVICE_AUTH_TOKEN_ONLY",
            AuthMethod::AssociationAndDeviceAuthToken => "ASSOCIATION_AND_DEVICE_AUTH_TOKEN",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// Create a device
    Create {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        /// path=F,type=es256|rs256|es256-x509|rsa-x509[,expiration-time=T]; repeatable (at most 3)
        #[arg(long = "public-key")]
        public_keys: Vec<String>,
        /// Refuse the device's connections
        #[arg(long)]
        blocked: bool,
        /// Metadata key=value; repeatable
        #[arg(long = "metadata")]
        metadata: Vec<String>,
        #[arg(long, value_enum)]
        device_type: Option<DeviceType>,
        /// How devices behind this gateway authenticate
        #[arg(long, value_enum)]
        auth_method: Option<AuthMethod>,
    },
    /// Show a device
    Describe {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
    },
    /// List the devices of a registry
    List {
        #[command(flatten)]
        registry: RegistryRef,
        /// Only these device ids (comma-separated)
        #[arg(long, value_delimiter = ',')]
        device_ids: Vec<String>,
        /// Stop after this many
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Change a device's blocked state or metadata
    Update {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        /// Refuse the device's connections
        #[arg(long, overrides_with = "no_blocked")]
        blocked: bool,
        /// Accept the device's connections again
        #[arg(long)]
        no_blocked: bool,
        /// Replace the metadata with these key=value pairs
        #[arg(long = "metadata")]
        metadata: Vec<String>,
    },
    /// Delete a device
    Delete {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
    },
    /// Device configs (cloud → device)
    #[command(subcommand)]
    Configs(ConfigsCommand),
    /// Device state reports
    #[command(subcommand)]
    States(StatesCommand),
    /// Commands to connected devices
    #[command(subcommand)]
    Commands(CommandsCommand),
    /// A device's public keys
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// Make a key pair for a device: P-256 (ES256), like `openssl ecparam -name prime256v1 -genkey`
    Keygen {
        /// Directory for ec_private.pem (mode 0600) and ec_public.pem
        #[arg(long)]
        out: PathBuf,
        /// RSA instead of P-256 (not built in yet; the error shows the openssl commands)
        #[arg(long)]
        rsa: bool,
    },
}

pub(super) fn metadata_map(pairs: &[String]) -> Result<Value> {
    let mut map = serde_json::Map::new();
    for pair in pairs {
        for (k, v) in parse_pairs("metadata", pair)? {
            map.insert(k, v.into());
        }
    }
    Ok(Value::Object(map))
}

pub(super) async fn devices(c: &ClientArgs, cmd: DevicesCommand) -> Result<()> {
    let client = AdminClient::new(c)?;
    let p = &c.project;
    match cmd {
        DevicesCommand::Create {
            device,
            registry,
            public_keys,
            blocked,
            metadata,
            device_type,
            auth_method,
        } => {
            let mut body = device_body(&device, &public_keys, blocked, &metadata)?;
            body["gatewayConfig"] = gateway_config(device_type, auth_method);
            let created = client
                .call(
                    Method::POST,
                    &format!("{}/devices", registry_path(p, &registry)),
                    &[],
                    Some(&body),
                )
                .await?;
            print_one(c.format, &created);
        }
        DevicesCommand::Describe { device, registry } => {
            print_one(
                c.format,
                &client
                    .call(Method::GET, &device_path(p, &registry, &device), &[], None)
                    .await?,
            );
        }
        DevicesCommand::List {
            registry,
            device_ids,
            limit,
        } => list(c, &client, &registry, device_ids, limit).await?,
        DevicesCommand::Update {
            device,
            registry,
            blocked,
            no_blocked,
            metadata,
        } => {
            let (body, mask) = update_body(blocked, no_blocked, &metadata)?;
            let d = client
                .call(
                    Method::PATCH,
                    &device_path(p, &registry, &device),
                    &[("updateMask", mask.join(","))],
                    Some(&body),
                )
                .await?;
            print_one(c.format, &d);
        }
        DevicesCommand::Delete { device, registry } => {
            client
                .call(
                    Method::DELETE,
                    &device_path(p, &registry, &device),
                    &[],
                    None,
                )
                .await?;
            eprintln!("Deleted device [{device}].");
        }
        DevicesCommand::Configs(cmd) => configs(c, &client, cmd).await?,
        DevicesCommand::States(cmd) => states(c, &client, cmd).await?,
        DevicesCommand::Commands(cmd) => commands(c, &client, cmd).await?,
        DevicesCommand::Credentials(cmd) => credentials(c, &client, cmd).await?,
        DevicesCommand::Keygen { .. } => unreachable!("keygen runs without a server"),
    }
    Ok(())
}

/// The body of `devices create`, without its gateway config.
fn device_body(
    device: &str,
    public_keys: &[String],
    blocked: bool,
    metadata: &[String],
) -> Result<Value> {
    let credentials: Result<Vec<Value>> = public_keys
        .iter()
        .map(|s| public_key_credential(s))
        .collect();
    let mut body =
        json!({ "id": device, "credentials": credentials?, "metadata": metadata_map(metadata)? });
    if blocked {
        body["blocked"] = true.into();
    }
    Ok(body)
}

/// `gatewayConfig` from `--device-type` and `--auth-method` (`{}` when neither is given).
fn gateway_config(device_type: Option<DeviceType>, auth_method: Option<AuthMethod>) -> Value {
    let mut gateway = json!({});
    if let Some(t) = device_type {
        gateway["gatewayType"] = match t {
            DeviceType::Gateway => "GATEWAY",
            DeviceType::NonGateway => "NON_GATEWAY",
        }
        .into();
    }
    if let Some(m) = auth_method {
        gateway["gatewayAuthMethod"] = m.proto_name().into();
    }
    gateway
}

/// The body and update mask of `devices update`; an error when no flag changes anything.
fn update_body(
    blocked: bool,
    no_blocked: bool,
    metadata: &[String],
) -> Result<(Value, Vec<&'static str>)> {
    let mut body = json!({});
    let mut mask = Vec::new();
    if blocked || no_blocked {
        body["blocked"] = (blocked && !no_blocked).into();
        mask.push("blocked");
    }
    if !metadata.is_empty() {
        body["metadata"] = metadata_map(metadata)?;
        mask.push("metadata");
    }
    if mask.is_empty() {
        bail!(
            "nothing to update; pass --blocked, --no-blocked or --metadata (keys use `credentials create|delete`)"
        );
    }
    Ok((body, mask))
}

/// `devices list`: every page up to `limit`, as a table or JSON.
async fn list(
    c: &ClientArgs,
    client: &AdminClient,
    registry: &RegistryRef,
    device_ids: Vec<String>,
    limit: Option<usize>,
) -> Result<()> {
    let mut query: Vec<(&str, String)> =
        device_ids.into_iter().map(|id| ("deviceIds", id)).collect();
    query.push(("fieldMask", "blocked,gatewayConfig,lastEventTime".into()));
    let items = list_all(
        client,
        &format!("{}/devices", registry_path(&c.project, registry)),
        "devices",
        query,
        limit,
    )
    .await?;
    print_list(
        c.format,
        &items,
        &["ID", "NUM_ID", "BLOCKED", "GATEWAY", "LAST_EVENT"],
        |d| {
            vec![
                cell(&d["id"]),
                cell(&d["numId"]),
                d["blocked"].as_bool().unwrap_or(false).to_string(),
                (d["gatewayConfig"]["gatewayType"].as_str() == Some("GATEWAY")).to_string(),
                cell(&d["lastEventTime"]),
            ]
        },
    )
}
