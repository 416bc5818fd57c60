//! One simulated device through every step: its key, the claim over MQTT with the bootstrap
//! credential, then a connection (and an event) as the device it became.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use perch_core::{Clock, SystemClock};
use perch_device::SigningKey;
use perch_device::bootstrap::{self, BootstrapOptions};
use perch_device::jwt::Algorithm;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, NetworkOptions, Outgoing,
    Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    BOOTSTRAP_ID, DISCONNECT_GRACE, JWT_LIFETIME, KEEP_ALIVE, MAX_PACKET_BYTES, Outcome,
    RequestKind, Storm,
};

/// Where devices connect and how they trust the bridge.
#[derive(Debug, Clone)]
pub(super) struct Bridge {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) tls: Arc<rustls::ClientConfig>,
}

impl Bridge {
    /// The TLS configuration of one simulated device, for both its connections: the shared
    /// roots, but a session cache of its own, so a device may resume its own TLS session (as one
    /// device process would) but never one another device made.
    fn device_tls(&self) -> Arc<rustls::ClientConfig> {
        let mut config = (*self.tls).clone();
        config.resumption = rustls::client::Resumption::in_memory_sessions(4);
        Arc::new(config)
    }
}

/// Device `index`'s claims: id, serial and MAC derived from the index.
pub(super) fn claims(index: usize) -> (String, String, String) {
    let b = (index as u32).to_be_bytes();
    (
        format!("prov-{index:07}"),
        format!("{index:016x}"),
        format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3]),
    )
}

/// Step 1: a fresh P-256 key and what to send for it (a CSR or the public key); no key but the
/// request for one with `generate-key`.
pub(super) fn make_key(kind: RequestKind, device_id: &str) -> Result<(Option<SigningKey>, Value)> {
    Ok(match kind {
        RequestKind::GenerateKey => (None, json!({ "generate_key": "ES256" })),
        RequestKind::PublicKey => {
            let generated = SigningKey::generate_es256()?;
            let request =
                json!({ "public_key": { "format": "ES256_PEM", "key": generated.public_pem } });
            (Some(generated.key), request)
        }
        RequestKind::Csr => {
            let generated = SigningKey::generate_es256()?;
            let pair = rcgen::KeyPair::from_pem(&generated.private_pem)?;
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, device_id);
            let request = json!({ "csr": params.serialize_request(&pair)?.pem()? });
            (Some(generated.key), request)
        }
    })
}

/// One simulated device through every step; never fails, records where it stopped instead.
pub(super) async fn provision_one(storm: &Storm, index: usize) -> Outcome {
    let mut out = Outcome::default();
    if let Err(failure) = provision_steps(storm, index, &mut out).await {
        out.failure = Some(failure);
    }
    out
}

/// The steps of `provision_one`, recording each one's latency in `out` as it ends; the first
/// failure's reason ends them.
async fn provision_steps(storm: &Storm, index: usize, out: &mut Outcome) -> Result<(), String> {
    let began = Instant::now();
    let (device_id, serial, mac) = claims(index);
    let tls = storm.bridge.device_tls();

    // 1. The key (and CSR).
    let t = Instant::now();
    let (key, mut body) = make_key(storm.request, &device_id).map_err(|e| format!("key: {e}"))?;
    out.key = Some(t.elapsed());
    body["serial"] = serial.into();
    body["mac"] = mac.into();
    body["device_id"] = device_id.clone().into();

    // 2. The claim with the bootstrap credential.
    let options = BootstrapOptions {
        project: storm.project.clone(),
        region: storm.location.clone(),
        registry: storm.registry.clone(),
        bootstrap: BOOTSTRAP_ID.to_owned(),
        host: storm.bridge.host.clone(),
        port: storm.bridge.port,
        tls: tls.clone(),
        key: storm.bootstrap_key.clone(),
        jwt_lifetime: JWT_LIFETIME,
    };
    let t = Instant::now();
    let answer = claim(&options, body, storm.timeout).await?;
    out.claim = Some(t.elapsed());
    if answer["decision"] != "ALLOWED" {
        return Err(format!(
            "claim: {} {}",
            answer["decision"].as_str().unwrap_or("no decision"),
            answer["reason"].as_str().unwrap_or("")
        ));
    }
    out.allowed_at = Some(Instant::now());
    let client_id = answer["mqtt"]["client_id"]
        .as_str()
        .ok_or_else(|| "claim: ALLOWED without mqtt.client_id".to_owned())?;
    let device = answer["device_id"].as_str().unwrap_or(&device_id);
    let key = match key {
        Some(key) => key,
        None => key_from_answer(&answer)?,
    };

    // 3. Connect as the new device (and publish one event).
    let publish_topic = storm.publish.then(|| format!("/devices/{device}/events"));
    let (connect, publish) = connect_as_device(storm, tls, &key, client_id, publish_topic).await?;
    out.connect = Some(connect);
    out.publish = publish;
    out.total = Some(began.elapsed());
    out.done_at = Some(Instant::now());
    Ok(())
}

/// Step 2: sends the claim `body` with the bootstrap credential and returns the answer, or why
/// none came.
async fn claim(
    options: &BootstrapOptions,
    body: Value,
    timeout: Duration,
) -> Result<Value, String> {
    let answer = bootstrap::ask(
        options,
        &bootstrap::new_request_id(),
        body.to_string(),
        timeout,
    )
    .await;
    match answer {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|_| "claim: the answer is not JSON".to_owned())
        }
        Err(perch_device::DeviceError::NoAnswer(_)) => Err("claim: no answer in time".into()),
        Err(e) => Err(format!("claim: {e}")),
    }
}

/// With `generate-key`: the private key the server made, from its answer.
fn key_from_answer(answer: &Value) -> Result<SigningKey, String> {
    match answer["private_key"]
        .as_str()
        .map(|pem| SigningKey::from_pem(pem.as_bytes(), Algorithm::Es256))
    {
        Some(Ok(key)) => Ok(key),
        Some(Err(e)) => Err(format!("claim: the private key in the answer: {e}")),
        None => Err("claim: ALLOWED without the private_key asked for".into()),
    }
}

/// Connects as `client_id` with a JWT signed by `key` until CONNACK 0, then publishes one QoS 1
/// event to `topic` and waits for its PUBACK. Returns both latencies, or the failure's reason.
pub(super) async fn connect_as_device(
    storm: &Storm,
    tls: Arc<rustls::ClientConfig>,
    key: &SigningKey,
    client_id: &str,
    topic: Option<String>,
) -> std::result::Result<(Duration, Option<Duration>), String> {
    let token = key
        .sign_jwt(&storm.project, SystemClock.now().into(), JWT_LIFETIME)
        .map_err(|e| format!("connect: {e}"))?;
    let mut options = MqttOptions::new(client_id, storm.bridge.host.clone(), storm.bridge.port);
    options
        .set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)))
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_credentials("unused", token);
    let (client, mut eventloop) = AsyncClient::new(options, 8);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(storm.timeout.as_secs());
    eventloop.set_network_options(network);

    let started = Instant::now();
    let mut connected: Option<Duration> = None;
    let mut published: Option<Instant> = None;
    let exchange = async {
        loop {
            let step = if connected.is_some() {
                "publish"
            } else {
                "connect"
            };
            let event = eventloop.poll().await.map_err(|e| match e {
                ConnectionError::ConnectionRefused(code) => {
                    format!("{step}: CONNACK {}", connack_code(code))
                }
                ConnectionError::NetworkTimeout => format!("{step}: TCP/TLS connect timed out"),
                e => format!("{step}: {e}"),
            })?;
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    connected = Some(started.elapsed());
                    let Some(topic) = &topic else {
                        return Ok(None);
                    };
                    published = Some(Instant::now());
                    client
                        .try_publish(topic.clone(), QoS::AtLeastOnce, false, b"{}".to_vec())
                        .map_err(|e| format!("publish: {e}"))?;
                }
                Event::Incoming(Packet::PubAck(_)) => {
                    return Ok::<_, String>(published.map(|t| t.elapsed()));
                }
                _ => {}
            }
        }
    };
    let result = match tokio::time::timeout(storm.timeout, exchange).await {
        Ok(r) => r,
        Err(_) if connected.is_some() => Err("publish: no PUBACK in time".into()),
        Err(_) => Err("connect: no CONNACK in time".into()),
    };
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    let publish = result?;
    let connect = connected.ok_or_else(|| "connect: no CONNACK".to_owned())?;
    Ok((connect, publish))
}

pub(super) fn connack_code(code: ConnectReturnCode) -> u8 {
    match code {
        ConnectReturnCode::Success => 0,
        ConnectReturnCode::RefusedProtocolVersion => 1,
        ConnectReturnCode::BadClientId => 2,
        ConnectReturnCode::ServiceUnavailable => 3,
        ConnectReturnCode::BadUserNamePassword => 4,
        ConnectReturnCode::NotAuthorized => 5,
    }
}
