//! `perch provision bootstraps …`: the bootstrap credentials a batch of devices provisions with.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::ClientArgs;
use crate::cli::client::AdminClient;
use crate::cli::names::{RegistryRef, registry_path};
use crate::cli::output::{cell, print_list, print_one};

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
pub(super) async fn bootstraps(
    c: &ClientArgs,
    client: &AdminClient,
    cmd: BootstrapsCommand,
) -> Result<()> {
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
            let body = bootstrap_body(
                &bootstrap,
                public_key.as_deref(),
                quota,
                expire_time,
                id_pattern,
                lot,
                reprovision_policy(reprovision, allow_reprovision),
            )?;
            let mut created = client
                .call(
                    Method::POST,
                    &format!("{}/bootstraps", registry_path(p, &registry)),
                    &[],
                    Some(&body),
                )
                .await?;
            if let Some(private) = created.as_object_mut().and_then(|o| o.remove("privateKey")) {
                write_bootstrap_key(&out, &bootstrap, &private, &created)?;
            }
            print_one(c.format, &created);
        }
        BootstrapsCommand::List { registry } => list(c, client, &registry).await?,
        BootstrapsCommand::Describe {
            bootstrap,
            registry,
        } => {
            print_one(
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
        } => set_enabled(c, client, &registry, &bootstrap, "disable").await?,
        BootstrapsCommand::Enable {
            bootstrap,
            registry,
        } => set_enabled(c, client, &registry, &bootstrap, "enable").await?,
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

/// `--reprovision` (or the older `--allow-reprovision`) as the API's policy name.
fn reprovision_policy(reprovision: Reprovision, allow_reprovision: bool) -> &'static str {
    match (reprovision, allow_reprovision) {
        (_, true) | (Reprovision::Rotate, _) => "ROTATE",
        (Reprovision::Deny, _) => "DENY",
        (Reprovision::RequireApproval, _) => "REQUIRE_APPROVAL",
    }
}

/// The body of `bootstraps create`.
fn bootstrap_body(
    bootstrap: &str,
    public_key: Option<&Path>,
    quota: Option<u64>,
    expire_time: Option<String>,
    id_pattern: Option<String>,
    lot: Option<String>,
    reprovision_policy: &str,
) -> Result<Value> {
    let mut body = json!({ "id": bootstrap });
    if let Some(path) = public_key {
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
    body["reprovisionPolicy"] = reprovision_policy.into();
    Ok(body)
}

/// Writes the private key the server generated (mode 0600) and its public key into `out`.
fn write_bootstrap_key(
    out: &Path,
    bootstrap: &str,
    private: &Value,
    created: &Value,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let key_path = out.join("bootstrap_private.pem");
    crate::datadir::write_private(&key_path, private.as_str().unwrap_or_default().as_bytes())?;
    std::fs::write(
        out.join("bootstrap_public.pem"),
        created["publicKey"].as_str().unwrap_or_default(),
    )?;
    eprintln!(
        "Wrote {} (mode 0600): flash it onto the batch with BOOTSTRAP_ID = {bootstrap}.",
        key_path.display()
    );
    Ok(())
}

/// `bootstraps list`.
async fn list(c: &ClientArgs, client: &AdminClient, registry: &RegistryRef) -> Result<()> {
    let r = client
        .call(
            Method::GET,
            &format!("{}/bootstraps", registry_path(&c.project, registry)),
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
    )
}

/// `bootstraps enable|disable` (`verb`): prints the bootstrap as it is now.
async fn set_enabled(
    c: &ClientArgs,
    client: &AdminClient,
    registry: &RegistryRef,
    bootstrap: &str,
    verb: &str,
) -> Result<()> {
    print_one(
        c.format,
        &client
            .call(
                Method::POST,
                &format!(
                    "{}/bootstraps/{bootstrap}:{verb}",
                    registry_path(&c.project, registry)
                ),
                &[],
                Some(&json!({})),
            )
            .await?,
    );
    Ok(())
}
