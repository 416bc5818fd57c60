//! Asking for a device credential with a bootstrap credential (docs/provisioning.md, "Device
//! protocol over MQTT"): one short MQTT/TLS connection as
//! `projects/P/locations/L/registries/R/bootstraps/B` with a JWT signed by the bootstrap key,
//! SUBSCRIBE `/bootstraps/B/responses/{rid}`, PUBLISH the request to
//! `/bootstraps/B/requests/{rid}`, read the one answer, DISCONNECT.
//!
//! [`ask`] is one attempt and knows nothing of the request's or answer's JSON; the caller
//! builds the body, reads the decision, and retries failed attempts with [`crate::backoff`] and a
//! fresh request id. A bootstrap connection may do nothing else (the bridge closes it), so this
//! does not share [`crate::client`], which subscribes to device topics on every connect.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, NetworkOptions, Outgoing,
    Packet, QoS, SubscribeReasonCode, TlsConfiguration, Transport,
};

use crate::client::describe;
use crate::error::{DeviceError, Result};
use crate::jwt::SigningKey;

/// Keep-alive of the bootstrap connection (it lives for seconds).
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// TCP + TLS + CONNACK must complete within this.
const CONNECT_TIMEOUT_SECS: u64 = 10;
/// Largest packet either way: a request or answer with a certificate chain fits easily.
const MAX_PACKET_BYTES: usize = 64 * 1024;
/// How long the DISCONNECT may take to leave once the answer is in.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// Everything needed to ask with one bootstrap credential.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    pub project: String,
    pub region: String,
    pub registry: String,
    /// The bootstrap credential's id `B`.
    pub bootstrap: String,
    /// The bridge's host name or IP address; the server certificate must name it.
    pub host: String,
    pub port: u16,
    /// From [`crate::tls::client_config`].
    pub tls: Arc<rustls::ClientConfig>,
    /// The bootstrap private key.
    pub key: Arc<SigningKey>,
    /// `exp - iat` of the bootstrap JWT.
    pub jwt_lifetime: Duration,
}

impl BootstrapOptions {
    /// `projects/P/locations/L/registries/R/bootstraps/B`.
    pub fn client_id(&self) -> String {
        format!(
            "projects/{}/locations/{}/registries/{}/bootstraps/{}",
            self.project, self.region, self.registry, self.bootstrap
        )
    }

    /// `/bootstraps/B/requests/{request_id}`.
    pub fn request_topic(&self, request_id: &str) -> String {
        format!("/bootstraps/{}/requests/{request_id}", self.bootstrap)
    }

    /// `/bootstraps/B/responses/{request_id}`.
    pub fn response_topic(&self, request_id: &str) -> String {
        format!("/bootstraps/{}/responses/{request_id}", self.bootstrap)
    }
}

/// A fresh request id: 32 random lowercase hex digits.
pub fn new_request_id() -> String {
    (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// One attempt: connects, subscribes to the response topic of `request_id`, publishes `body`
/// (QoS 1) to its request topic and returns the answer's bytes, all within `timeout`.
/// Fails with [`DeviceError::Connection`] when the connection is refused (CONNACK 5: unknown
/// bootstrap or a bad token) or lost, and [`DeviceError::NoAnswer`] when `timeout` passes.
pub async fn ask(
    options: &BootstrapOptions,
    request_id: &str,
    body: impl Into<Vec<u8>>,
    timeout: Duration,
) -> Result<Bytes> {
    let token = options
        .key
        .sign_jwt(&options.project, SystemTime::now(), options.jwt_lifetime)?;
    let mut mqtt_options =
        MqttOptions::new(options.client_id(), options.host.clone(), options.port);
    mqtt_options
        .set_transport(Transport::Tls(TlsConfiguration::Rustls(
            options.tls.clone(),
        )))
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_credentials("unused", token);
    let (client, mut eventloop) = AsyncClient::new(mqtt_options, 8);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
    eventloop.set_network_options(network);

    let response_topic = options.response_topic(request_id);
    let request_topic = options.request_topic(request_id);
    let mut body = Some(body.into());
    let exchange = async {
        loop {
            let event = eventloop.poll().await.map_err(|e| {
                DeviceError::Connection(match e {
                    ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => {
                        "connection refused (CONNACK 5, not authorized: unknown bootstrap, wrong \
                         BOOTSTRAP_KEY or project, or the clock is off)"
                            .to_owned()
                    }
                    e => describe(&e),
                })
            })?;
            match event {
                Event::Incoming(Packet::ConnAck(_)) => client
                    .try_subscribe(response_topic.clone(), QoS::AtLeastOnce)
                    .map_err(|e| DeviceError::Connection(e.to_string()))?,
                Event::Incoming(Packet::SubAck(ack)) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        return Err(DeviceError::Connection(format!(
                            "subscription to {response_topic} refused"
                        )));
                    }
                    if let Some(body) = body.take() {
                        client
                            .try_publish(request_topic.clone(), QoS::AtLeastOnce, false, body)
                            .map_err(|e| DeviceError::Connection(e.to_string()))?;
                    }
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == response_topic => {
                    return Ok(p.payload);
                }
                _ => {}
            }
        }
    };
    let answer = match tokio::time::timeout(timeout, exchange).await {
        Ok(answer) => answer,
        Err(_) => Err(DeviceError::NoAnswer(timeout)),
    };
    // Leave politely: the PUBACK of the answer and a DISCONNECT, briefly.
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
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_protocol() {
        let options = BootstrapOptions {
            project: "p".into(),
            region: "us-central1".into(),
            registry: "r".into(),
            bootstrap: "lot-7".into(),
            host: "localhost".into(),
            port: 8883,
            tls: Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            ),
            key: Arc::new(SigningKey::generate_es256().unwrap().key),
            jwt_lifetime: Duration::from_secs(600),
        };
        assert_eq!(
            options.client_id(),
            "projects/p/locations/us-central1/registries/r/bootstraps/lot-7"
        );
        assert_eq!(
            options.request_topic("abc"),
            "/bootstraps/lot-7/requests/abc"
        );
        assert_eq!(
            options.response_topic("abc"),
            "/bootstraps/lot-7/responses/abc"
        );
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(id, new_request_id());
    }
}
