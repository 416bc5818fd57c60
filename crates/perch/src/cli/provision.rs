//! `perch provision …`: bootstrap credentials, allow/deny lists and decisions of fleet
//! provisioning (docs/provisioning.md).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use super::client::AdminClient;
use super::output::{cell, describe, print_list};
use super::{ClientArgs, Format};

/// `perch provision …`
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ProvisionCommand,
}

/// `--registry REG --region R`
#[derive(Debug, Args, Clone)]
pub struct RegistryRef {
    #[arg(long)]
    registry: String,
    #[arg(long)]
    region: String,
}

#[derive(Debug, Subcommand)]
pub enum ProvisionCommand {
    /// Bootstrap credentials
    #[command(subcommand)]
    Bootstraps(BootstrapsCommand),
    /// Allowlist entries (when any exists, only matching devices may provision)
    #[command(subcommand)]
    Allowlist(ListCommand),
    /// Denylist entries (refused, and matching provisioned devices are blocked)
    #[command(subcommand)]
    Denylist(ListCommand),
    /// Provisioning decisions, newest first
    #[command(subcommand)]
    Decisions(DecisionsCommand),
    /// The operator webhook asked last before a device is registered
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Re-provisioning requests held by a REQUIRE_APPROVAL bootstrap
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List approvals (default: the pending ones)
    List {
        #[command(flatten)]
        registry: RegistryRef,
        /// PENDING, APPROVED, DENIED or ALL
        #[arg(long, default_value = "PENDING")]
        state: String,
    },
    /// Approve: the device's credential is replaced by the key it sent, and its next retry succeeds
    Approve {
        device: String,
        /// The pending request's key, as `approvals list` shows it (refused if a newer request
        /// replaced it)
        #[arg(long)]
        key_fingerprint: String,
        #[command(flatten)]
        registry: RegistryRef,
    },
    /// Deny: retries with that key are refused with APPROVAL_DENIED
    Deny {
        device: String,
        /// The pending request's key, as `approvals list` shows it
        #[arg(long)]
        key_fingerprint: String,
        #[command(flatten)]
        registry: RegistryRef,
    },
}

/// What a bootstrap does when a device that already exists asks again.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Reprovision {
    /// Refuse with ALREADY_REGISTERED
    Deny,
    /// Replace the device's credential with the new key
    Rotate,
    /// Hold the request until an operator approves or denies it (PENDING_APPROVAL)
    RequireApproval,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnError {
    Deny,
    Allow,
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Set the webhook: POST {registry, bootstrap, lot, claims, key_fingerprint}, answer {"allow": bool, "reason": "…"}
    Set {
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long)]
        url: String,
        /// Milliseconds to wait (default 2000, at most 30000)
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// What an unanswered or failing webhook means
        #[arg(long, value_enum, default_value_t = OnError::Deny)]
        on_error: OnError,
    },
    /// Show the webhook
    Show {
        #[command(flatten)]
        registry: RegistryRef,
    },
    /// Remove the webhook
    Clear {
        #[command(flatten)]
        registry: RegistryRef,
    },
}

#[derive(Debug, Subcommand)]
pub enum BootstrapsCommand {
    /// Create a bootstrap credential; without --public-key Perch makes the key pair and writes
    /// bootstrap_private.pem (0600) and bootstrap_public.pem to --out
    Create {
        bootstrap: String,
        #[command(flatten)]
        registry: RegistryRef,
        /// An ES256 public key (PEM) the operator made instead
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Where to write a generated key pair
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Devices it may provision (default 10,000)
        #[arg(long)]
        quota: Option<u64>,
        /// RFC 3339 time after which it provisions nothing
        #[arg(long)]
        expire_time: Option<String>,
        /// Glob requested device ids must match, e.g. 'pi-*'
        #[arg(long)]
        id_pattern: Option<String>,
        #[arg(long)]
        lot: Option<String>,
        /// What happens when a device that already exists asks again
        #[arg(long, value_enum, default_value_t = Reprovision::Deny)]
        reprovision: Reprovision,
        /// Same as --reprovision rotate
        #[arg(long, conflicts_with = "reprovision")]
        allow_reprovision: bool,
    },
    /// List bootstrap credentials
    List {
        #[command(flatten)]
        registry: RegistryRef,
    },
    /// Show one
    Describe {
        bootstrap: String,
        #[command(flatten)]
        registry: RegistryRef,
    },
    /// Stop new provisioning from it (provisioned devices are not touched)
    Disable {
        bootstrap: String,
        #[command(flatten)]
        registry: RegistryRef,
    },
    /// Allow provisioning from it again
    Enable {
        bootstrap: String,
        #[command(flatten)]
        registry: RegistryRef,
    },
    /// Delete it
    Delete {
        bootstrap: String,
        #[command(flatten)]
        registry: RegistryRef,
    },
}

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

#[derive(Debug, Subcommand)]
pub enum DecisionsCommand {
    /// List decisions
    List {
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long)]
        bootstrap: Option<String>,
        /// ALLOWED, DENYLISTED, NOT_ALLOWLISTED, ALREADY_REGISTERED, QUOTA_EXCEEDED, …
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

fn registry_path(project: &str, r: &RegistryRef) -> String {
    format!(
        "projects/{project}/locations/{}/registries/{}",
        r.region, r.registry
    )
}

fn print(format: Format, v: &Value) {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Format::Table => describe(v),
    }
}

fn parse_kind(s: &str) -> Result<&'static str> {
    Ok(match s.trim().to_ascii_lowercase().as_str() {
        "serial" => "SERIAL",
        "mac" => "MAC",
        "device_id" | "device-id" => "DEVICE_ID",
        "key_fingerprint" | "key-fingerprint" => "KEY_FINGERPRINT",
        other => bail!("unknown kind '{other}'; use serial, mac, device_id or key_fingerprint"),
    })
}

pub async fn run(args: ProvisionArgs) -> Result<()> {
    let c = &args.client;
    let client = AdminClient::new(c)?;
    let p = &c.project;
    match args.command {
        ProvisionCommand::Bootstraps(cmd) => bootstraps(c, &client, cmd).await?,
        ProvisionCommand::Allowlist(cmd) => lists(c, &client, "ALLOW", cmd).await?,
        ProvisionCommand::Denylist(cmd) => lists(c, &client, "DENY", cmd).await?,
        ProvisionCommand::Webhook(cmd) => {
            let (registry, body) = match cmd {
                WebhookCommand::Set {
                    registry,
                    url,
                    timeout_ms,
                    on_error,
                } => {
                    let on_error = match on_error {
                        OnError::Deny => "DENY",
                        OnError::Allow => "ALLOW",
                    };
                    (
                        registry,
                        Some(
                            json!({ "url": url, "timeoutMs": timeout_ms.unwrap_or(0), "onError": on_error }),
                        ),
                    )
                }
                WebhookCommand::Clear { registry } => (registry, Some(json!({ "url": "" }))),
                WebhookCommand::Show { registry } => (registry, None),
            };
            let path = format!("{}/provisioningWebhook", registry_path(p, &registry));
            let method = if body.is_some() {
                Method::PUT
            } else {
                Method::GET
            };
            print(
                c.format,
                &client.call(method, &path, &[], body.as_ref()).await?,
            );
        }
        ProvisionCommand::Approvals(cmd) => approvals(c, &client, cmd).await?,
        ProvisionCommand::Decisions(DecisionsCommand::List {
            registry,
            bootstrap,
            reason,
            limit,
        }) => {
            let mut query = vec![("pageSize", limit.to_string())];
            query.extend(bootstrap.map(|b| ("bootstrap", b)));
            query.extend(reason.map(|r| ("reason", r)));
            let r = client
                .call(
                    Method::GET,
                    &format!("{}/provisioningDecisions", registry_path(p, &registry)),
                    &query,
                    None,
                )
                .await?;
            let items = r["decisions"].as_array().cloned().unwrap_or_default();
            print_list(
                c.format,
                &items,
                &[
                    "TIME",
                    "BOOTSTRAP",
                    "DEVICE_ID",
                    "SERIAL",
                    "DECISION",
                    "REASON",
                    "MESSAGE",
                ],
                |d| {
                    [
                        "time",
                        "bootstrap",
                        "device_id",
                        "serial",
                        "decision",
                        "reason",
                        "message",
                    ]
                    .iter()
                    .map(|k| cell(&d[*k]))
                    .collect()
                },
            )?
        }
    }
    Ok(())
}

async fn approvals(c: &ClientArgs, client: &AdminClient, cmd: ApprovalsCommand) -> Result<()> {
    let p = &c.project;
    let (registry, device, fingerprint, verb) = match cmd {
        ApprovalsCommand::List { registry, state } => {
            let state = state.to_ascii_uppercase();
            let query: Vec<(&str, String)> = if state == "ALL" {
                vec![]
            } else {
                vec![("state", state)]
            };
            let r = client
                .call(
                    Method::GET,
                    &format!("{}/provisioningApprovals", registry_path(p, &registry)),
                    &query,
                    None,
                )
                .await?;
            let items = r["approvals"].as_array().cloned().unwrap_or_default();
            print_list(
                c.format,
                &items,
                &[
                    "DEVICE_ID",
                    "STATE",
                    "BOOTSTRAP",
                    "SERIAL",
                    "KEY_FINGERPRINT",
                    "REQUEST_TIME",
                ],
                |a| {
                    vec![
                        cell(&a["deviceId"]),
                        cell(&a["state"]),
                        cell(&a["bootstrap"]),
                        cell(&a["claims"]["serial"]),
                        cell(&a["keyFingerprint"]),
                        cell(&a["requestTime"]),
                    ]
                },
            )?;
            return Ok(());
        }
        ApprovalsCommand::Approve {
            device,
            key_fingerprint,
            registry,
        } => (registry, device, key_fingerprint, "approve"),
        ApprovalsCommand::Deny {
            device,
            key_fingerprint,
            registry,
        } => (registry, device, key_fingerprint, "deny"),
    };
    let decided = client
        .call(
            Method::POST,
            &format!(
                "{}/provisioningApprovals/{device}:{verb}",
                registry_path(p, &registry)
            ),
            &[],
            Some(&json!({ "keyFingerprint": fingerprint })),
        )
        .await?;
    print(c.format, &decided);
    Ok(())
}

async fn bootstraps(c: &ClientArgs, client: &AdminClient, cmd: BootstrapsCommand) -> Result<()> {
    let p = &c.project;
    match cmd {
        BootstrapsCommand::Create {
            bootstrap,
            registry,
            public_key,
            out,
            quota,
            expire_time,
            id_pattern,
            lot,
            reprovision,
            allow_reprovision,
        } => {
            let mut body = json!({ "id": bootstrap });
            if let Some(path) = &public_key {
                body["publicKey"] = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .into();
                body["format"] = "ES256_PEM".into();
            }
            if let Some(q) = quota {
                body["deviceQuota"] = q.into();
            }
            if let Some(t) = expire_time {
                body["expireTime"] = t.into();
            }
            if let Some(pat) = id_pattern {
                body["deviceIdPattern"] = pat.into();
            }
            if let Some(l) = lot {
                body["lot"] = l.into();
            }
            body["reprovisionPolicy"] = match (reprovision, allow_reprovision) {
                (_, true) | (Reprovision::Rotate, _) => "ROTATE",
                (Reprovision::Deny, _) => "DENY",
                (Reprovision::RequireApproval, _) => "REQUIRE_APPROVAL",
            }
            .into();
            let mut created = client
                .call(
                    Method::POST,
                    &format!("{}/bootstraps", registry_path(p, &registry)),
                    &[],
                    Some(&body),
                )
                .await?;
            if let Some(private) = created.as_object_mut().and_then(|o| o.remove("privateKey")) {
                std::fs::create_dir_all(&out)
                    .with_context(|| format!("cannot create {}", out.display()))?;
                let key_path = out.join("bootstrap_private.pem");
                crate::datadir::write_private(
                    &key_path,
                    private.as_str().unwrap_or_default().as_bytes(),
                )?;
                std::fs::write(
                    out.join("bootstrap_public.pem"),
                    created["publicKey"].as_str().unwrap_or_default(),
                )?;
                eprintln!(
                    "Wrote {} (mode 0600): flash it onto the batch with BOOTSTRAP_ID = {bootstrap}.",
                    key_path.display()
                );
            }
            print(c.format, &created);
        }
        BootstrapsCommand::List { registry } => {
            let r = client
                .call(
                    Method::GET,
                    &format!("{}/bootstraps", registry_path(p, &registry)),
                    &[],
                    None,
                )
                .await?;
            let items = r["bootstraps"].as_array().cloned().unwrap_or_default();
            print_list(
                c.format,
                &items,
                &[
                    "ID",
                    "ENABLED",
                    "PROVISIONED",
                    "QUOTA",
                    "REFUSED",
                    "EXPIRE_TIME",
                    "LOT",
                ],
                |b| {
                    [
                        "id",
                        "enabled",
                        "provisioned",
                        "deviceQuota",
                        "refused",
                        "expireTime",
                        "lot",
                    ]
                    .iter()
                    .map(|k| cell(&b[*k]))
                    .collect()
                },
            )?
        }
        BootstrapsCommand::Describe {
            bootstrap,
            registry,
        } => {
            print(
                c.format,
                &client
                    .call(
                        Method::GET,
                        &format!("{}/bootstraps/{bootstrap}", registry_path(p, &registry)),
                        &[],
                        None,
                    )
                    .await?,
            );
        }
        BootstrapsCommand::Disable {
            bootstrap,
            registry,
        } => {
            print(
                c.format,
                &client
                    .call(
                        Method::POST,
                        &format!(
                            "{}/bootstraps/{bootstrap}:disable",
                            registry_path(p, &registry)
                        ),
                        &[],
                        Some(&json!({})),
                    )
                    .await?,
            );
        }
        BootstrapsCommand::Enable {
            bootstrap,
            registry,
        } => {
            print(
                c.format,
                &client
                    .call(
                        Method::POST,
                        &format!(
                            "{}/bootstraps/{bootstrap}:enable",
                            registry_path(p, &registry)
                        ),
                        &[],
                        Some(&json!({})),
                    )
                    .await?,
            );
        }
        BootstrapsCommand::Delete {
            bootstrap,
            registry,
        } => {
            client
                .call(
                    Method::DELETE,
                    &format!("{}/bootstraps/{bootstrap}", registry_path(p, &registry)),
                    &[],
                    None,
                )
                .await?;
            eprintln!("Deleted bootstrap credential [{bootstrap}].");
        }
    }
    Ok(())
}

async fn lists(c: &ClientArgs, client: &AdminClient, list: &str, cmd: ListCommand) -> Result<()> {
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
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
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
                entries
                    .push(json!({ "list": list, "kind": kind, "value": value, "reason": reason }));
            }
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
