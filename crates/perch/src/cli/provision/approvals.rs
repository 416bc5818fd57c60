//! `perch provision approvals …`: re-provisioning requests waiting for an operator.

use anyhow::Result;
use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use crate::cli::ClientArgs;
use crate::cli::client::AdminClient;
use crate::cli::names::{RegistryRef, registry_path};
use crate::cli::output::{cell, print_list, print_one};

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
pub(super) async fn approvals(
    c: &ClientArgs,
    client: &AdminClient,
    cmd: ApprovalsCommand,
) -> Result<()> {
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
    print_one(c.format, &decided);
    Ok(())
}
