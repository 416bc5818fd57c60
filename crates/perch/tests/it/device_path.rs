//! The device path end to end, from Rust: raw MQTT 3.1.1 frames over TLS to a real `perch serve`
//! (the binary, spawned), through Pub/Sub to a pull and to the telemetry sink; revocation; config
//! and commands. The frames are written by hand here, not with the bridge's codec, so the test
//! checks the wire, not our own encoder. Waits poll with a deadline (`eventually`), never sleep.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use perch_device::jwt::SigningKey;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::harness::*;

/// How long a device-path step may take before the test fails.
const STEP_DEADLINE: Duration = Duration::from_secs(10);

const REGISTRY: &str = "projects/p1/locations/us-central1/registries/reg";

fn v1(path: &str) -> String {
    format!("/v1/{path}")
}

// ----- a hand-written MQTT 3.1.1 client -----

/// An MQTT packet as read off the wire: the fixed header's first byte and the rest.
#[derive(Debug)]
struct Frame {
    header: u8,
    body: Vec<u8>,
}

impl Frame {
    fn kind(&self) -> u8 {
        self.header >> 4
    }

    /// The topic and payload of a PUBLISH, and its packet id when QoS > 0.
    fn publish(&self) -> (String, Option<u16>, Vec<u8>) {
        assert_eq!(self.kind(), 3, "not a PUBLISH: {self:?}");
        let len = usize::from(u16::from_be_bytes([self.body[0], self.body[1]]));
        let topic = String::from_utf8(self.body[2..2 + len].to_vec()).expect("utf-8 topic");
        let mut rest = &self.body[2 + len..];
        let id = if self.header & 0x06 != 0 {
            let id = u16::from_be_bytes([rest[0], rest[1]]);
            rest = &rest[2..];
            Some(id)
        } else {
            None
        };
        (topic, id, rest.to_vec())
    }
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u16::try_from(s.len()).expect("short").to_be_bytes());
    out.extend_from_slice(s);
}

fn frame(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

struct Device {
    stream: TlsStream<TcpStream>,
}

impl Device {
    /// Opens TLS to the server's MQTT listener, trusting only the server's CA.
    async fn open(server: &TestServer) -> Device {
        let ca = std::fs::read(server.ca.as_ref().expect("a spawned server has a CA")).expect("ca");
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(
                &ca,
            )
        {
            roots.add(cert.expect("CA PEM")).expect("add the CA");
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(server.mqtt.expect("the MQTT listener"))
            .await
            .expect("connect to the MQTT listener");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let stream = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the server's CA");
        Device { stream }
    }

    /// Connects as `device` with a fresh JWT; returns the CONNACK return code.
    async fn connect(server: &TestServer, device: &str, key: &SigningKey) -> (Device, u8) {
        let mut d = Device::open(server).await;
        let jwt = key
            .sign_jwt("p1", SystemTime::now(), Duration::from_secs(3600))
            .expect("sign a JWT");
        let mut body = Vec::new();
        string(&mut body, b"MQTT");
        body.extend_from_slice(&[4, 0xC2, 0, 60]); // 3.1.1; username, password, clean; 60 s
        string(&mut body, format!("{REGISTRY}/devices/{device}").as_bytes());
        string(&mut body, b"unused");
        string(&mut body, jwt.as_bytes());
        d.send(0x10, &body).await;
        let ack = d.read().await.expect("a CONNACK");
        assert_eq!(ack.kind(), 2, "CONNACK expected, got {ack:?}");
        (d, ack.body[1])
    }

    async fn send(&mut self, header: u8, body: &[u8]) {
        self.stream
            .write_all(&frame(header, body))
            .await
            .expect("write a packet");
        self.stream.flush().await.expect("flush");
    }

    /// The next packet, or `None` once the server closed the connection.
    async fn read(&mut self) -> Option<Frame> {
        tokio::time::timeout(STEP_DEADLINE, self.read_frame())
            .await
            .expect("a packet or a close in time")
    }

    async fn read_frame(&mut self) -> Option<Frame> {
        let header = self.stream.read_u8().await.ok()?;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let byte = self.stream.read_u8().await.ok()?;
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).await.ok()?;
        Some(Frame { header, body })
    }

    async fn publish_qos1(&mut self, topic: &str, id: u16, payload: &[u8]) {
        let mut body = Vec::new();
        string(&mut body, topic.as_bytes());
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(payload);
        self.send(0x32, &body).await;
    }

    async fn subscribe(&mut self, filter: &str, id: u16, qos: u8) -> u8 {
        let mut body = id.to_be_bytes().to_vec();
        string(&mut body, filter.as_bytes());
        body.push(qos);
        self.send(0x82, &body).await;
        let ack = self.read().await.expect("a SUBACK");
        assert_eq!(ack.kind(), 9, "SUBACK expected, got {ack:?}");
        assert_eq!(ack.body[..2], id.to_be_bytes(), "the SUBACK's packet id");
        ack.body[2]
    }

    async fn puback(&mut self, id: u16) {
        self.send(0x40, &id.to_be_bytes()).await;
    }

    /// Reads until the server closes the connection, failing on any packet but the ones allowed.
    async fn expect_closed(&mut self) {
        while let Some(f) = self.read().await {
            assert!(
                f.kind() == 3,
                "only PUBLISHes may precede the close, got {f:?}"
            );
        }
    }
}

// ----- fixtures -----

/// A registry `reg` routing telemetry to topic `telemetry`, a device `dev` with a fresh ES256 key, a
/// subscription `pulls` on it, and a sink keeping it. Returns the device's key.
async fn fleet(server: &TestServer) -> SigningKey {
    let rest = server.rest();
    rest.send(
        reqwest::Method::PUT,
        "/v1/projects/p1/topics/telemetry",
        Some(&json!({})),
    )
    .await
    .ok();
    for sub in ["pulls", "perch-sink-telemetry"] {
        rest.send(
            reqwest::Method::PUT,
            &format!("/v1/projects/p1/subscriptions/{sub}"),
            Some(&json!({"topic": "projects/p1/topics/telemetry", "ackDeadlineSeconds": 60})),
        )
        .await
        .ok();
    }
    rest.post(
        &v1("projects/p1/locations/us-central1/registries"),
        &json!({"id": "reg", "eventNotificationConfigs": [{"pubsubTopicName": "projects/p1/topics/telemetry"}]}),
    )
    .await
    .ok();
    let generated = SigningKey::generate_es256().expect("a P-256 key");
    rest.post(
        &v1(&format!("{REGISTRY}/devices")),
        &json!({"id": "dev", "credentials": [{"publicKey": {"format": "ES256_PEM", "key": generated.public_pem}}]}),
    )
    .await
    .ok();
    generated.key
}

async fn device_resource(server: &TestServer) -> Value {
    server
        .rest()
        .get(&v1(&format!("{REGISTRY}/devices/dev")))
        .await
        .ok()
}

/// The value of the sample `series` (name and labels, as Prometheus renders them) on the
/// server's `/metrics`, 0 when absent.
async fn metric(server: &TestServer, series: &str) -> f64 {
    let reply = server.rest().get("/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply
        .text
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

// ----- tests -----

/// A QoS 1 PUBLISH is PUBACKed, reaches a pull with the trusted attributes the bridge set (not
/// what the payload claims), and lands in the sink as a row; a publish to another device's
/// topic closes the connection without a PUBACK.
#[tokio::test]
async fn telemetry_over_raw_mqtt_reaches_a_pull_and_a_sink_row() {
    let server = TestServer::spawn();
    let key = fleet(&server).await;
    let num_id = device_resource(&server).await["numId"]
        .as_str()
        .expect("numId")
        .to_owned();

    let (mut device, code) = Device::connect(&server, "dev", &key).await;
    assert_eq!(code, 0, "CONNACK accepted");
    let payload = br#"{"temperature_c": 21.5, "deviceId": "someone-else"}"#;
    device
        .publish_qos1("/devices/dev/events/room-1", 7, payload)
        .await;
    let ack = device.read().await.expect("a PUBACK");
    assert_eq!(
        (ack.kind(), ack.body.as_slice()),
        (4, &7u16.to_be_bytes()[..])
    );

    let rest = server.rest();
    let pulled = rest
        .post(
            "/v1/projects/p1/subscriptions/pulls:pull",
            &json!({"maxMessages": 10}),
        )
        .await
        .ok();
    let messages = pulled["receivedMessages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{pulled}");
    let message = &messages[0]["message"];
    assert_eq!(
        STANDARD
            .decode(message["data"].as_str().expect("data"))
            .expect("base64"),
        payload
    );
    let attributes = &message["attributes"];
    assert_eq!(attributes["deviceId"], "dev");
    assert_eq!(attributes["deviceNumId"], num_id.as_str());
    assert_eq!(attributes["deviceRegistryId"], "reg");
    assert_eq!(attributes["deviceRegistryLocation"], "us-central1");
    assert_eq!(attributes["projectId"], "p1");
    assert_eq!(attributes["subFolder"], "room-1");

    let row = eventually("the sink row", STEP_DEADLINE, || async {
        let reply = rest
            .get("/v1/projects/p1/telemetry?deviceId=dev")
            .await
            .ok();
        reply["points"].as_array()?.first().cloned()
    })
    .await;
    assert_eq!(row["deviceId"], "dev");
    assert_eq!(row["deviceNumId"], num_id.as_str());
    assert_eq!(row["subFolder"], "room-1");
    assert_eq!(row["json"]["temperature_c"], 21.5);

    // Another device's topic: no PUBACK, the connection closes, and the device's
    // lastErrorStatus says why (recorded at the next activity flush).
    device.publish_qos1("/devices/other/events", 8, b"{}").await;
    device.expect_closed().await;
    let status = eventually("lastErrorStatus", STEP_DEADLINE, || async {
        let d = device_resource(&server).await;
        let message = d["lastErrorStatus"]["message"].as_str()?.to_owned();
        Some(message)
    })
    .await;
    assert!(status.contains("/devices/other/events"), "{status}");
    let closes = r#"perch_mqtt_closes_total{reason="not_allowed"}"#;
    assert_eq!(metric(&server, closes).await, 1.0);
}

/// Blocking a connected device closes its session within the bound the docs give, and a new
/// CONNECT is refused with CONNACK 5; unblocking lets it back in.
#[tokio::test]
async fn blocking_a_connected_device_cuts_it_off() {
    let server = TestServer::spawn();
    let key = fleet(&server).await;
    let (mut device, code) = Device::connect(&server, "dev", &key).await;
    assert_eq!(code, 0);

    let rest = server.rest();
    let path = v1(&format!("{REGISTRY}/devices/dev?updateMask=blocked"));
    rest.patch(&path, &json!({"blocked": true})).await.ok();
    device.expect_closed().await;
    let closes = r#"perch_mqtt_closes_total{reason="blocked"}"#;
    eventually("the close counted", STEP_DEADLINE, || async {
        (metric(&server, closes).await == 1.0).then_some(())
    })
    .await;

    let (_refused, code) = Device::connect(&server, "dev", &key).await;
    assert_eq!(code, 5, "a blocked device is not authorized");

    rest.patch(&path, &json!({"blocked": false})).await.ok();
    let (_device, code) = Device::connect(&server, "dev", &key).await;
    assert_eq!(code, 0, "unblocked, the device connects again");
}

/// A config subscription gets the current config at once and each new version as it is
/// written; a command waits for the device's PUBACK, and one for a device that is not
/// subscribed is FAILED_PRECONDITION.
#[tokio::test]
async fn config_and_commands_reach_the_device() {
    let server = TestServer::spawn();
    let key = fleet(&server).await;
    let rest = server.rest();
    let device_path = v1(&format!("{REGISTRY}/devices/dev"));

    let (mut device, code) = Device::connect(&server, "dev", &key).await;
    assert_eq!(code, 0);
    assert_eq!(device.subscribe("/devices/dev/config", 1, 1).await, 1);
    let first = device.read().await.expect("the current config");
    let (topic, id, _) = first.publish();
    assert_eq!(topic, "/devices/dev/config");
    device.puback(id.expect("QoS 1 config")).await;

    rest.post(
        &format!("{device_path}:modifyCloudToDeviceConfig"),
        &json!({"binaryData": STANDARD.encode("mode=eco")}),
    )
    .await
    .ok();
    let update = device.read().await.expect("the new config");
    let (topic, id, payload) = update.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("/devices/dev/config", &b"mode=eco"[..])
    );
    device.puback(id.expect("QoS 1 config")).await;

    // Not subscribed to commands yet.
    let command = json!({"binaryData": STANDARD.encode("reboot"), "subfolder": "ops"});
    rest.post(&format!("{device_path}:sendCommandToDevice"), &command)
        .await
        .error(400, "FAILED_PRECONDITION");

    assert_eq!(device.subscribe("/devices/dev/commands/#", 2, 1).await, 1);
    let send = {
        let rest = server.rest();
        let path = format!("{device_path}:sendCommandToDevice");
        let command = command.clone();
        tokio::spawn(async move { rest.post(&path, &command).await })
    };
    let delivered = device.read().await.expect("the command");
    let (topic, id, payload) = delivered.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("/devices/dev/commands/ops", &b"reboot"[..])
    );
    assert!(
        !send.is_finished(),
        "the call waits for the device's PUBACK"
    );
    device.puback(id.expect("QoS 1 command")).await;
    let reply = tokio::time::timeout(STEP_DEADLINE, send)
        .await
        .expect("the call answers once the device acknowledged")
        .expect("join");
    assert_eq!(reply.status, 200, "{}", reply.text);
}

/// A gateway (ASSOCIATION_ONLY) attaches a bound device, publishes for it with that device's
/// identity in the trusted attributes, and loses it when it is unbound: the detach comes on
/// the gateway's errors topic, and publishing for the device afterwards closes the connection.
#[tokio::test]
async fn a_gateway_speaks_for_a_bound_device_until_it_is_unbound() {
    let server = TestServer::spawn();
    fleet(&server).await;
    let rest = server.rest();
    let gateway = SigningKey::generate_es256().expect("a P-256 key");
    rest.post(
        &v1(&format!("{REGISTRY}/devices")),
        &json!({
            "id": "gw-1",
            "gatewayConfig": {"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"},
            "credentials": [{"publicKey": {"format": "ES256_PEM", "key": gateway.public_pem}}]
        }),
    )
    .await
    .ok();
    let binding = json!({"gatewayId": "gw-1", "deviceId": "dev"});
    rest.post(&v1(&format!("{REGISTRY}:bindDeviceToGateway")), &binding)
        .await
        .ok();

    let (mut gw, code) = Device::connect(&server, "gw-1", &gateway.key).await;
    assert_eq!(code, 0);
    assert_eq!(gw.subscribe("/devices/gw-1/errors", 1, 0).await, 0);
    gw.publish_qos1("/devices/dev/attach", 1, b"{}").await;
    let ack = gw.read().await.expect("the attach PUBACK");
    assert_eq!(
        (ack.kind(), ack.body.as_slice()),
        (4, &1u16.to_be_bytes()[..])
    );
    gw.publish_qos1("/devices/dev/events", 2, b"via-gateway")
        .await;
    let ack = gw.read().await.expect("the event PUBACK");
    assert_eq!(
        (ack.kind(), ack.body.as_slice()),
        (4, &2u16.to_be_bytes()[..])
    );

    let pulled = rest
        .post(
            "/v1/projects/p1/subscriptions/pulls:pull",
            &json!({"maxMessages": 10}),
        )
        .await
        .ok();
    let message = &pulled["receivedMessages"][0]["message"];
    assert_eq!(message["attributes"]["deviceId"], "dev", "{pulled}");
    assert_eq!(message["data"], STANDARD.encode("via-gateway"));

    rest.post(
        &v1(&format!("{REGISTRY}:unbindDeviceFromGateway")),
        &binding,
    )
    .await
    .ok();
    let detached = gw.read().await.expect("the detach notice");
    let (topic, _, payload) = detached.publish();
    assert_eq!(topic, "/devices/gw-1/errors");
    let notice = String::from_utf8_lossy(&payload);
    assert!(notice.contains("GATEWAY_ATTACHMENT_ERROR"), "{notice}");
    gw.publish_qos1("/devices/dev/events", 3, b"too-late").await;
    gw.expect_closed().await;
}
