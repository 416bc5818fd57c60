//! `perch provision allowlist|denylist …`: entries that decide which devices may provision.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::ClientArgs;
use crate::cli::client::AdminClient;
use crate::cli::names::{RegistryRef, registry_path};
use crate::cli::output::{cell, print_list};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    Serial,
    Mac,
    DeviceId,
    KeyFingerprint,
}

impl Kind {
    fn api(self) -> &'static str {
        match self {
            Kind::Serial => "SERIAL",
            Kind::Mac => "MAC",
            Kind::DeviceId => "DEVICE_ID",
            Kind::KeyFingerprint => "KEY_FINGERPRINT",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ListCommand {
    /// Add an entry
    Add {
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long)]
        value: String,
        /// Why (compromised, abusive, …)
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove an entry
    Remove {
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long)]
        value: String,
    },
    /// Import entries from a CSV file of `kind,value,reason` lines (kind: serial, mac, device_id, key_fingerprint)
    Import {
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long)]
        file: PathBuf,
    },
    /// List the entries of this list
    List {
        #[command(flatten)]
        registry: RegistryRef,
    },
}
pub(super) fn parse_kind(s: &str) -> Result<&'static str> {
    Ok(match s.trim().to_ascii_lowercase().as_str() {
        "serial" => "SERIAL",
        "mac" => "MAC",
        "device_id" | "device-id" => "DEVICE_ID",
        "key_fingerprint" | "key-fingerprint" => "KEY_FINGERPRINT",
        other => bail!("unknown kind '{other}'; use serial, mac, device_id or key_fingerprint"),
    })
}
pub(super) async fn lists(
    c: &ClientArgs,
    client: &AdminClient,
    list: &str,
    cmd: ListCommand,
) -> Result<()> {
    let p = &c.project;
    let send = |registry: &RegistryRef, verb: &str, entries: Vec<Value>| {
        let path = format!("{}/provisioningPolicy:{verb}", registry_path(p, registry));
        async move {
            client
                .call(
                    Method::POST,
                    &path,
                    &[],
                    Some(&json!({ "entries": entries })),
                )
                .await
        }
    };
    match cmd {
        ListCommand::Add {
            registry,
            kind,
            value,
            reason,
        } => {
            send(
                &registry,
                "add",
                vec![json!({ "list": list, "kind": kind.api(), "value": value, "reason": reason })],
            )
            .await?;
            eprintln!(
                "Added {} {value} to the {} list.",
                kind.api(),
                list.to_ascii_lowercase()
            );
        }
        ListCommand::Remove {
            registry,
            kind,
            value,
        } => {
            let r = send(
                &registry,
                "remove",
                vec![json!({ "list": list, "kind": kind.api(), "value": value })],
            )
            .await?;
            if r["removed"].as_u64() == Some(0) {
                bail!(
                    "{} {value} is not on the {} list",
                    kind.api(),
                    list.to_ascii_lowercase()
                );
            }
        }
        ListCommand::Import { registry, file } => {
            let entries = import_entries(&file, list)?;
            let count = entries.len();
            send(&registry, "add", entries).await?;
            eprintln!(
                "Imported {count} entries into the {} list.",
                list.to_ascii_lowercase()
            );
        }
        ListCommand::List { registry } => {
            let r = client
                .call(
                    Method::GET,
                    &format!("{}/provisioningPolicy", registry_path(p, &registry)),
                    &[],
                    None,
                )
                .await?;
            let items: Vec<Value> = r["entries"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e["list"] == list)
                .collect();
            print_list(c.format, &items, &["KIND", "VALUE", "REASON"], |e| {
                vec![cell(&e["kind"]), cell(&e["value"]), cell(&e["reason"])]
            })?
        }
    }
    Ok(())
}

/// The entries of an import file: `kind,value[,reason]` lines; blank lines and `#` comments are
/// skipped.
fn import_entries(file: &Path, list: &str) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cols = line.splitn(3, ',');
        let kind = parse_kind(cols.next().unwrap_or_default())
            .with_context(|| format!("{}:{}", file.display(), n + 1))?;
        let value = cols
            .next()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .with_context(|| format!("{}:{}: no value", file.display(), n + 1))?;
        let reason = cols.next().unwrap_or("").trim();
        entries.push(json!({ "list": list, "kind": kind, "value": value, "reason": reason }));
    }
    Ok(entries)
}
