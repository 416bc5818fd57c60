//! Perch mode's setup and check, through the admin REST API (`cli::client::AdminClient`):
//! the topic, the registry that routes telemetry to it, the bench devices (created
//! concurrently, or found existing), and a subscription that counts what was stored.
//!
//! Devices are named `bench-000000`, `bench-000001`, … and all carry the public half of one
//! ES256 key (device keys need not be unique; signing is what each connect costs, not key
//! generation). `--key-file` keeps that key, so a later run can reuse the registry.
//!
//! Does not own connecting devices or counting publishes (`load.rs`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use perch_core::{Clock, SystemClock};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::publisher::parse_stamp;
use ::perch::cli::client::AdminClient;
use ::perch::datadir::write_private;

/// Messages one verification pull asks for (Perch's Pull cap).
const PULL_MAX_MESSAGES: usize = 1000;
/// Empty pulls in a row that end the verification once everything expected arrived.
const EMPTY_PULLS_TO_STOP: usize = 3;
/// Bound on the whole verification, so a mismatch never hangs the bench.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a pulled message stays leased: longer than the verification, so none is redelivered.
const VERIFY_ACK_DEADLINE_SECONDS: u32 = 600;

/// The bench devices' id: `bench-000000`, `bench-000001`, …
pub(super) fn device_id(index: usize) -> String {
    format!("bench-{index:06}")
}

/// The one device key: read from `key_file`, or generated (and written there when given).
/// Returns the private PKCS#8 PEM and the public PEM.
pub(super) fn device_key(key_file: Option<&Path>) -> Result<(String, String)> {
    let private = match key_file {
        Some(path) if path.exists() => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --key-file {}", path.display()))?,
        _ => {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .context("cannot generate a P-256 key")?;
            let pem = key.serialize_pem();
            if let Some(path) = key_file {
                write_private(path, pem.as_bytes())?;
            }
            pem
        }
    };
    let public = rcgen::KeyPair::from_pem(&private)
        .context("--key-file must hold a P-256 private key in PKCS#8 PEM")?
        .public_key_pem();
    Ok((private, public))
}

/// What Perch mode created or found before the load.
#[derive(Debug, Serialize)]
pub(super) struct Setup {
    pub(super) registry: String,
    pub(super) topic: String,
    pub(super) registry_created: bool,
    pub(super) devices_created: usize,
    pub(super) devices_existing: usize,
    pub(super) seconds: f64,
    pub(super) devices_per_second: f64,
    /// The subscription `--verify-subscription` reads, created before the load.
    pub(super) subscription: Option<String>,
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.to_string().starts_with("NOT_FOUND")
}

fn is_already_exists(e: &anyhow::Error) -> bool {
    e.to_string().starts_with("ALREADY_EXISTS")
}

/// Finds or creates the registry (with a new topic for its telemetry), then the devices.
pub(super) async fn prepare(
    client: Arc<AdminClient>,
    location: &str,
    registry_id: &str,
    public_key: &str,
    devices: usize,
    concurrency: usize,
    verify: bool,
) -> Result<Setup> {
    let started = Instant::now();
    let project = location
        .split('/')
        .nth(1)
        .context("the location is projects/P/locations/L")?
        .to_owned();
    let registry = format!("{location}/registries/{registry_id}");
    let (topic, registry_created) = match client.call(Method::GET, &registry, &[], None).await {
        Ok(found) => (event_topic(&found, &registry)?, false),
        Err(e) if is_not_found(&e) => {
            let topic = format!("projects/{project}/topics/{registry_id}-events");
            match client
                .call(Method::PUT, &topic, &[], Some(&json!({})))
                .await
            {
                Ok(_) => {}
                Err(e) if is_already_exists(&e) => {}
                Err(e) => return Err(e.context(format!("cannot create topic {topic}"))),
            }
            let body = json!({
                "id": registry_id,
                "eventNotificationConfigs": [{ "pubsubTopicName": topic }],
            });
            client
                .call(
                    Method::POST,
                    &format!("{location}/registries"),
                    &[],
                    Some(&body),
                )
                .await
                .with_context(|| format!("cannot create registry {registry}"))?;
            (topic, true)
        }
        Err(e) => return Err(e.context(format!("cannot read registry {registry}"))),
    };

    let (created, existing) =
        create_devices(&client, &registry, public_key, devices, concurrency).await?;
    let seconds = started.elapsed().as_secs_f64();
    let subscription = if verify {
        let name = format!(
            "projects/{project}/subscriptions/{registry_id}-verify-{}",
            SystemClock.now().timestamp_millis()
        );
        let body = json!({ "topic": topic, "ackDeadlineSeconds": VERIFY_ACK_DEADLINE_SECONDS });
        client
            .call(Method::PUT, &name, &[], Some(&body))
            .await
            .with_context(|| format!("cannot create subscription {name}"))?;
        Some(name)
    } else {
        None
    };
    Ok(Setup {
        registry,
        topic,
        registry_created,
        devices_created: created,
        devices_existing: existing,
        seconds,
        devices_per_second: devices as f64 / seconds.max(1e-9),
        subscription,
    })
}

/// The topic of the registry's catch-all event notification config.
fn event_topic(registry: &Value, name: &str) -> Result<String> {
    let configs = registry["eventNotificationConfigs"].as_array();
    configs
        .into_iter()
        .flatten()
        .find(|c| c["subfolderMatches"].as_str().unwrap_or("").is_empty())
        .and_then(|c| c["pubsubTopicName"].as_str())
        .map(str::to_owned)
        .with_context(|| {
            format!("registry {name} routes no telemetry without a subfolder; give it an event notification config")
        })
}

/// Creates devices `0..devices` with `concurrency` requests in flight; an existing device is
/// kept as it is. Returns (created, existing).
async fn create_devices(
    client: &Arc<AdminClient>,
    registry: &str,
    public_key: &str,
    devices: usize,
    concurrency: usize,
) -> Result<(usize, usize)> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency.min(devices).max(1))
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            let path = format!("{registry}/devices");
            let key = public_key.to_owned();
            tokio::spawn(async move {
                let (mut created, mut existing) = (0, 0);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= devices {
                        return Ok::<_, anyhow::Error>((created, existing));
                    }
                    let body = json!({
                        "id": device_id(i),
                        "credentials": [{ "publicKey": { "format": "ES256_PEM", "key": key } }],
                    });
                    match client.call(Method::POST, &path, &[], Some(&body)).await {
                        Ok(_) => created += 1,
                        Err(e) if is_already_exists(&e) => existing += 1,
                        Err(e) => {
                            return Err(e.context(format!("cannot create device {}", device_id(i))));
                        }
                    }
                }
            })
        })
        .collect();
    let (mut created, mut existing) = (0, 0);
    for worker in workers {
        let (c, e) = worker.await??;
        created += c;
        existing += e;
    }
    Ok((created, existing))
}

/// What the subscription received, against what the devices had acknowledged.
#[derive(Debug, Serialize)]
pub(super) struct Verification {
    pub(super) subscription: String,
    pub(super) received: u64,
    /// Distinct (device, sequence) stamps among them.
    pub(super) distinct: u64,
    pub(super) duplicates: u64,
    /// Publishes the devices saw PUBACKed (QoS 1), or sent (QoS 0).
    pub(super) expected: u64,
    /// `distinct == expected` and no message the devices did not send.
    pub(super) matches: bool,
    pub(super) seconds: f64,
}

/// Pulls (and acks) everything the subscription holds, then deletes it.
pub(super) async fn verify(
    client: &AdminClient,
    subscription: &str,
    expected: u64,
) -> Result<Verification> {
    let started = Instant::now();
    let mut seen = HashSet::new();
    let (mut received, mut unstamped, mut empty) = (0u64, 0u64, 0usize);
    while started.elapsed() < VERIFY_TIMEOUT {
        let body = json!({ "maxMessages": PULL_MAX_MESSAGES, "returnImmediately": true });
        let pulled = client
            .call(
                Method::POST,
                &format!("{subscription}:pull"),
                &[],
                Some(&body),
            )
            .await
            .with_context(|| format!("cannot pull from {subscription}"))?;
        let messages = pulled["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if messages.is_empty() {
            empty += 1;
            if empty >= EMPTY_PULLS_TO_STOP && seen.len() as u64 + unstamped >= expected {
                break;
            }
            // Everything acknowledged is already in the log; this only waits out stragglers
            // (QoS 0, or a publish stored after its connection was lost).
            tokio::time::sleep(Duration::from_millis(200)).await;
            if empty >= EMPTY_PULLS_TO_STOP * 5 {
                break;
            }
            continue;
        }
        empty = 0;
        let mut ack_ids = Vec::with_capacity(messages.len());
        for m in &messages {
            received += 1;
            let data = STANDARD
                .decode(m["message"]["data"].as_str().unwrap_or(""))
                .unwrap_or_default();
            match parse_stamp(&data) {
                Some(stamp) => {
                    seen.insert(stamp);
                }
                None => unstamped += 1,
            }
            ack_ids.push(m["ackId"].clone());
        }
        client
            .call(
                Method::POST,
                &format!("{subscription}:acknowledge"),
                &[],
                Some(&json!({ "ackIds": ack_ids })),
            )
            .await
            .with_context(|| format!("cannot acknowledge on {subscription}"))?;
    }
    if let Err(e) = client.call(Method::DELETE, subscription, &[], None).await {
        eprintln!("warning: cannot delete {subscription}: {e}");
    }
    let distinct = seen.len() as u64;
    Ok(Verification {
        subscription: subscription.to_owned(),
        received,
        distinct,
        duplicates: received - distinct - unstamped,
        expected,
        matches: distinct == expected && unstamped == 0,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catch_all_event_config_names_the_topic() {
        let registry = json!({ "eventNotificationConfigs": [
            { "subfolderMatches": "a", "pubsubTopicName": "projects/p/topics/a" },
            { "pubsubTopicName": "projects/p/topics/all" },
        ]});
        assert_eq!(
            event_topic(&registry, "r").unwrap(),
            "projects/p/topics/all"
        );
        let err = event_topic(&json!({}), "r").unwrap_err().to_string();
        assert!(err.contains("routes no telemetry"), "{err}");
    }

    #[test]
    fn a_key_file_is_written_once_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("key.pem");
        let (private, public) = device_key(Some(&path)).unwrap();
        let (again, public_again) = device_key(Some(&path)).unwrap();
        assert_eq!(private, again);
        assert_eq!(public, public_again);
        assert!(public.contains("BEGIN PUBLIC KEY"));
    }
}
