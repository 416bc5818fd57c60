//! `perch iot registries|devices …`, shaped like `gcloud iot`.

mod credentials;
mod device_data;
mod devices;
mod registries;

pub use credentials::CredentialsCommand;
pub use device_data::{CommandsCommand, ConfigsCommand, StatesCommand};
pub use devices::{AuthMethod, DeviceType, DevicesCommand};
pub use registries::{RegistriesCommand, RegistrySettings};

use std::path::Path;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use crate::cli::ClientArgs;
use crate::cli::client::AdminClient;
use credentials::keygen;
use devices::devices;
use registries::registries;

/// `perch iot …`
#[derive(Debug, Args)]
pub struct IotArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: IotCommand,
}

#[derive(Debug, Subcommand)]
pub enum IotCommand {
    /// Manage device registries
    #[command(subcommand)]
    Registries(RegistriesCommand),
    /// Manage devices
    #[command(subcommand)]
    Devices(DevicesCommand),
}

/// Parses `k=v,k=v` flag values.
fn parse_pairs(flag: &str, value: &str) -> Result<Vec<(String, String)>> {
    value
        .split(',')
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .with_context(|| {
                    format!("--{flag} takes key=value pairs separated by commas, got '{value}'")
                })
        })
        .collect()
}

fn read_file(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// Follows page tokens until `limit` items (or the end), collecting `field` from each page.
async fn list_all(
    client: &AdminClient,
    path: &str,
    field: &str,
    mut query: Vec<(&str, String)>,
    limit: Option<usize>,
) -> Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let mut q = query.clone();
        if !token.is_empty() {
            q.push(("pageToken", token.clone()));
        }
        let page = client.call(Method::GET, path, &q, None).await?;
        if let Some(list) = page[field].as_array() {
            items.extend(list.iter().cloned());
        }
        if limit.is_some_and(|l| items.len() >= l) {
            items.truncate(limit.unwrap_or(usize::MAX));
            break;
        }
        token = page["nextPageToken"].as_str().unwrap_or("").to_owned();
        if token.is_empty() {
            break;
        }
        query.retain(|(k, _)| *k != "pageToken");
    }
    Ok(items)
}

pub async fn run(args: IotArgs) -> Result<()> {
    let c = &args.client;
    match args.command {
        IotCommand::Registries(cmd) => registries(c, cmd).await,
        IotCommand::Devices(DevicesCommand::Keygen { out, rsa }) => keygen(&out, rsa),
        IotCommand::Devices(cmd) => devices(c, cmd).await,
    }
}
