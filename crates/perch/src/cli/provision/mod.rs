//! `perch provision …`: bootstrap credentials, allow/deny lists and decisions of fleet
//! provisioning (docs/provisioning.md).

mod approvals;
mod bootstraps;
mod lists;

pub use approvals::ApprovalsCommand;
pub use bootstraps::{BootstrapsCommand, Reprovision};
pub use lists::{Kind, ListCommand};

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::json;

use crate::cli::ClientArgs;
use crate::cli::client::AdminClient;
use crate::cli::names::{RegistryRef, registry_path};
use crate::cli::output::{cell, print_list, print_one};
use approvals::approvals;
use bootstraps::bootstraps;
use lists::lists;

/// `perch provision …`
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ProvisionCommand,
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

pub async fn run(args: ProvisionArgs) -> Result<()> {
    let c = &args.client;
    let client = AdminClient::new(c)?;
    match args.command {
        ProvisionCommand::Bootstraps(cmd) => bootstraps(c, &client, cmd).await,
        ProvisionCommand::Allowlist(cmd) => lists(c, &client, "ALLOW", cmd).await,
        ProvisionCommand::Denylist(cmd) => lists(c, &client, "DENY", cmd).await,
        ProvisionCommand::Webhook(cmd) => webhook(c, &client, cmd).await,
        ProvisionCommand::Approvals(cmd) => approvals(c, &client, cmd).await,
        ProvisionCommand::Decisions(cmd) => decisions(c, &client, cmd).await,
    }
}

/// `webhook set|clear|show`.
async fn webhook(c: &ClientArgs, client: &AdminClient, cmd: WebhookCommand) -> Result<()> {
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
    let path = format!(
        "{}/provisioningWebhook",
        registry_path(&c.project, &registry)
    );
    let method = if body.is_some() {
        Method::PUT
    } else {
        Method::GET
    };
    print_one(
        c.format,
        &client.call(method, &path, &[], body.as_ref()).await?,
    );
    Ok(())
}

/// `decisions list`.
async fn decisions(c: &ClientArgs, client: &AdminClient, cmd: DecisionsCommand) -> Result<()> {
    let DecisionsCommand::List {
        registry,
        bootstrap,
        reason,
        limit,
    } = cmd;
    let mut query = vec![("pageSize", limit.to_string())];
    query.extend(bootstrap.map(|b| ("bootstrap", b)));
    query.extend(reason.map(|r| ("reason", r)));
    let r = client
        .call(
            Method::GET,
            &format!(
                "{}/provisioningDecisions",
                registry_path(&c.project, &registry)
            ),
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
    )
}
