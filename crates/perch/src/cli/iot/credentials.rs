//! A device's keys: `perch iot devices credentials …`, the `--public-key` flag, and
//! `perch iot devices keygen`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::{parse_pairs, read_file};
use crate::cli::client::AdminClient;
use crate::cli::names::{RegistryRef, device_path};
use crate::cli::output::{cell, table};
use crate::cli::{ClientArgs, Format};

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Add a public key
    Create {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long)]
        path: PathBuf,
        #[arg(long, value_parser = ["es256", "rs256", "es256-x509", "rsa-x509"])]
        r#type: String,
        /// RFC 3339 time after which the key no longer authenticates
        #[arg(long)]
        expiration_time: Option<String>,
    },
    /// List public keys
    List {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
    },
    /// Remove the public key at an index (as `credentials list` shows)
    Delete {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long)]
        index: usize,
    },
}

pub(super) fn public_key_credential(spec: &str) -> Result<Value> {
    let mut path = None;
    let mut kind = None;
    let mut expiration = None;
    for (k, v) in parse_pairs("public-key", spec)? {
        match k.as_str() {
            "path" => path = Some(v),
            "type" => kind = Some(v),
            "expiration-time" => expiration = Some(v),
            other => {
                bail!("--public-key has no key '{other}'; use path=F,type=T[,expiration-time=T]")
            }
        }
    }
    let path = path.context("--public-key needs path=FILE")?;
    let kind = kind.context("--public-key needs type=es256|rs256|es256-x509|rsa-x509")?;
    credential(Path::new(&path), &kind, expiration.as_deref())
}

pub(super) fn credential(path: &Path, kind: &str, expiration: Option<&str>) -> Result<Value> {
    let format = match kind {
        "es256" => "ES256_PEM",
        "rs256" => "RSA_PEM",
        "es256-x509" => "ES256_X509_PEM",
        "rsa-x509" => "RSA_X509_PEM",
        other => bail!("unknown key type '{other}'; use es256, rs256, es256-x509 or rsa-x509"),
    };
    let key = read_file(path, "public key")?;
    let mut credential = json!({ "publicKey": { "format": format, "key": key } });
    if let Some(t) = expiration {
        credential["expirationTime"] = t.into();
    }
    Ok(credential)
}

pub(super) async fn credentials(
    c: &ClientArgs,
    client: &AdminClient,
    cmd: CredentialsCommand,
) -> Result<()> {
    let p = &c.project;
    let (device, registry) = match &cmd {
        CredentialsCommand::Create {
            device, registry, ..
        }
        | CredentialsCommand::List { device, registry }
        | CredentialsCommand::Delete {
            device, registry, ..
        } => (device.clone(), registry.clone()),
    };
    let path = device_path(p, &registry, &device);
    let current = client
        .call(
            Method::GET,
            &path,
            &[("fieldMask", "credentials".into())],
            None,
        )
        .await?;
    let mut creds = current["credentials"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let replace = |creds: Vec<Value>| {
        let body = json!({ "credentials": creds });
        let path = path.clone();
        async move {
            client
                .call(
                    Method::PATCH,
                    &path,
                    &[("updateMask", "credentials".into())],
                    Some(&body),
                )
                .await
        }
    };
    match cmd {
        CredentialsCommand::Create {
            path: key_path,
            r#type,
            expiration_time,
            ..
        } => {
            creds.push(credential(&key_path, &r#type, expiration_time.as_deref())?);
            replace(creds).await?;
            eprintln!("Added a {type} credential to [{device}].", type = r#type);
        }
        CredentialsCommand::List { .. } => match c.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&creds)?),
            Format::Table => table(
                &["INDEX", "FORMAT", "EXPIRATION_TIME"],
                &creds
                    .iter()
                    .enumerate()
                    .map(|(i, cr)| {
                        vec![
                            i.to_string(),
                            cell(&cr["publicKey"]["format"]),
                            cell(&cr["expirationTime"]),
                        ]
                    })
                    .collect::<Vec<_>>(),
            ),
        },
        CredentialsCommand::Delete { index, .. } => {
            if index >= creds.len() {
                bail!(
                    "device `{device}` has {} credentials; index {index} does not exist (see `credentials list`)",
                    creds.len()
                );
            }
            creds.remove(index);
            replace(creds).await?;
            eprintln!("Deleted credential {index} of [{device}].");
        }
    }
    Ok(())
}

/// Writes a P-256 key pair as PEM: the private key PKCS#8 with mode 0600.
pub(super) fn keygen(out: &Path, rsa: bool) -> Result<()> {
    if rsa {
        bail!(
            "RSA key generation is not built in yet; run `openssl genpkey -algorithm RSA -out {dir}/rsa_private.pem -pkeyopt rsa_keygen_bits:2048 && openssl rsa -in {dir}/rsa_private.pem -pubout -out {dir}/rsa_public.pem`",
            dir = out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let private = out.join("ec_private.pem");
    let public = out.join("ec_public.pem");
    if private.exists() {
        bail!(
            "{} exists; refusing to overwrite a private key",
            private.display()
        );
    }
    crate::datadir::write_private(&private, key.serialize_pem().as_bytes())?;
    std::fs::write(&public, key.public_key_pem())
        .with_context(|| format!("cannot write {}", public.display()))?;
    println!("{}", private.display());
    println!("{}", public.display());
    Ok(())
}
