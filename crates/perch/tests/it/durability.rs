//! What survives a stop: SIGTERM (clean exit), SIGKILL (crash), and an in-process shutdown,
//! each followed by a restart on the same data dir.

use perch_proto::iot as pb;
use serde_json::{Value, json};

use crate::harness::*;

fn v1(path: &str) -> String {
    format!("/v1/{LOCATION}{path}")
}

/// Creates registry `reg` (with an event config) and device `dev-1` (with a key and a second
/// config version) over REST; returns them as the server answered.
async fn populate(rest: &Rest) -> (Value, Value) {
    let registry = rest
        .post(
            &v1("/registries"),
            &json!({
                "id": "reg",
                "eventNotificationConfigs": [{"pubsubTopicName": "projects/p1/topics/t"}],
                "mqttConfig": {"mqttEnabledState": "MQTT_DISABLED"}
            }),
        )
        .await
        .ok();
    rest.post(
        &v1("/registries/reg/devices"),
        &json!({
            "id": "dev-1",
            "credentials": [{"publicKey": {"format": "ES256_PEM", "key": es256_public_key_pem()}}],
            "metadata": {"k": "v"}
        }),
    )
    .await
    .ok();
    rest.post(
        &v1("/registries/reg/devices/dev-1:modifyCloudToDeviceConfig"),
        &json!({"binaryData": "djI="}),
    )
    .await
    .ok();
    let device = rest.get(&v1("/registries/reg/devices/dev-1")).await.ok();
    (registry, device)
}

async fn assert_still_there(rest: &Rest, registry: &Value, device: &Value) {
    assert_eq!(&rest.get(&v1("/registries/reg")).await.ok(), registry);
    assert_eq!(
        &rest.get(&v1("/registries/reg/devices/dev-1")).await.ok(),
        device
    );
    let versions = rest
        .get(&v1("/registries/reg/devices/dev-1/configVersions"))
        .await
        .ok();
    let versions: Vec<&Value> = versions["deviceConfigs"]
        .as_array()
        .expect("deviceConfigs")
        .iter()
        .map(|c| &c["version"])
        .collect();
    assert_eq!(versions, ["2", "1"]);
}

#[tokio::test]
async fn sigterm_exits_0_removes_endpoints_and_a_restart_keeps_everything() {
    let mut server = TestServer::spawn();
    let token = server.token.clone();
    let (registry, device) = populate(&server.rest()).await;
    // An idle gRPC connection must not hold the shutdown up.
    let mut grpc = server.grpc_client().await;
    grpc.get_device_registry(pb::GetDeviceRegistryRequest {
        name: registry_name("reg"),
    })
    .await
    .expect("gRPC works before the stop");

    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        !server.data_dir().join("endpoints.json").exists(),
        "a clean stop removes endpoints.json"
    );

    let server = server.restart().await;
    assert_eq!(server.token, token, "the admin token is kept");
    assert_still_there(&server.rest(), &registry, &device).await;
    let mut grpc = server.grpc_client().await;
    let got = grpc
        .get_device(pb::GetDeviceRequest {
            name: device_name("reg", "dev-1"),
            field_mask: None,
        })
        .await
        .expect("gRPC after the restart")
        .into_inner();
    assert_eq!(got.metadata.get("k").map(String::as_str), Some("v"));
}

#[tokio::test]
async fn sigkill_then_restart_keeps_acknowledged_creates() {
    let mut server = TestServer::spawn();
    let rest = server.rest();
    let (registry, device) = populate(&rest).await;
    let mut num_ids = Vec::new();
    for i in 0..20 {
        let d = rest
            .post(
                &v1("/registries/reg/devices"),
                &json!({"id": format!("bulk-{i:02}")}),
            )
            .await
            .ok();
        num_ids.push(d["numId"].as_str().expect("numId").to_owned());
    }
    server.kill();

    let server = server.restart().await;
    let rest = server.rest();
    assert_still_there(&rest, &registry, &device).await;
    let listed = rest
        .get(&v1("/registries/reg/devices?fieldMask=numId"))
        .await
        .ok();
    let devices = listed["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 21, "{listed}");
    for (i, num_id) in num_ids.iter().enumerate() {
        let d = rest
            .get(&v1(&format!("/registries/reg/devices/{num_id}")))
            .await
            .ok();
        assert_eq!(d["id"], format!("bulk-{i:02}"));
    }
    // The store is writable after the crash.
    rest.post(&v1("/registries/reg/devices"), &json!({"id": "after"}))
        .await
        .ok();
}

#[tokio::test]
async fn an_in_process_server_stops_cleanly_and_restarts_on_the_same_dir() {
    let mut server = TestServer::start(false);
    let token = server.token.clone();
    let (registry, device) = populate(&server.rest()).await;
    server
        .shutdown()
        .await
        .expect("perch::serve returns Ok after its shutdown future resolves");
    assert!(!server.data_dir().join("endpoints.json").exists());

    let server = server.restart().await;
    assert_eq!(server.token, token);
    assert_still_there(&server.rest(), &registry, &device).await;
}

/// Every entry under `dir` (not following links) with its permission bits.
fn modes_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, bool, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            for e in std::fs::read_dir(&path).expect("read_dir") {
                pending.push(e.expect("entry").path());
            }
        }
        out.push((path, meta.is_dir(), meta.permissions().mode() & 0o777));
    }
    out
}

fn assert_private(dir: &std::path::Path) {
    for (path, is_dir, mode) in modes_under(dir) {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
    }
}

#[tokio::test]
async fn data_files_are_private_and_a_wider_data_dir_is_tightened_at_start_up() {
    let mut server = TestServer::spawn();
    let rest = server.rest();
    populate(&rest).await;
    // A topic and a publish create the Pub/Sub store and a message-log segment.
    rest.send(
        reqwest::Method::PUT,
        "/v1/projects/p1/topics/modes",
        Some(&json!({})),
    )
    .await
    .ok();
    rest.post(
        "/v1/projects/p1/topics/modes:publish",
        &json!({"messages": [{"data": "aGk="}]}),
    )
    .await
    .ok();
    let data_dir = server.data_dir().to_owned();
    let names: Vec<String> = modes_under(&data_dir)
        .iter()
        .map(|(p, _, _)| p.display().to_string())
        .collect();
    for file in [
        "registry.redb",
        "pubsub.redb",
        ".seg",
        "admin-token",
        "ca.key",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(file)),
            "no {file} in {names:?}"
        );
    }
    assert_private(&data_dir);

    // An older version (or an operator) left everything open to other users.
    server.kill();
    for (path, is_dir, _) in modes_under(&data_dir) {
        let wide = if is_dir { 0o755 } else { 0o644 };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(wide)).expect("chmod");
    }
    let server = server.restart().await;
    assert_private(server.data_dir());
    let log = std::fs::read_to_string(data_dir.parent().expect("root").join("server-1.log"))
        .expect("server log");
    assert!(
        log.contains("took their access away") && log.contains("registry.redb"),
        "{log}"
    );
    // Still works after the change.
    server.rest().get(&v1("/registries/reg")).await.ok();
}

/// The next StreamingPull response, within a deadline.
async fn next_response(
    responses: &mut tonic::Streaming<perch_proto::pubsub::StreamingPullResponse>,
) -> perch_proto::pubsub::StreamingPullResponse {
    tokio::time::timeout(std::time::Duration::from_secs(10), responses.message())
        .await
        .expect("a StreamingPull response in time")
        .expect("the stream stays up")
        .expect("the stream stays open")
}

/// Exactly-once over StreamingPull (issue 12): the AcknowledgeConfirmation is sent only once the
/// acks are on disk, so a SIGKILL right after it must not bring the messages back.
#[tokio::test]
async fn exactly_once_streaming_ack_confirmations_are_sent_only_once_durable() {
    use perch_proto::pubsub as ps;
    use tokio_stream::wrappers::ReceiverStream;

    const SUB: &str = "projects/p1/subscriptions/eo-sub";
    let mut server = TestServer::spawn();
    let rest = server.rest();
    for (path, body) in [
        ("/v1/projects/p1/topics/eo-acks", json!({})),
        (
            "/v1/projects/p1/subscriptions/eo-sub",
            json!({"topic": "projects/p1/topics/eo-acks", "enableExactlyOnceDelivery": true}),
        ),
    ] {
        rest.send(reqwest::Method::PUT, path, Some(&body))
            .await
            .ok();
    }
    let messages: Vec<Value> = (0..5).map(|_| json!({"data": "b2xk"})).collect();
    rest.post(
        "/v1/projects/p1/topics/eo-acks:publish",
        &json!({ "messages": messages }),
    )
    .await
    .ok();

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
        .expect("grpc uri")
        .connect()
        .await
        .expect("connect");
    let auth: tonic::metadata::AsciiMetadataValue =
        format!("Bearer {}", server.token.clone().expect("token"))
            .parse()
            .expect("ascii");
    let mut client = ps::subscriber_client::SubscriberClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", auth.clone());
            Ok(r)
        },
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ps::StreamingPullRequest {
        subscription: SUB.into(),
        stream_ack_deadline_seconds: 60,
        ..Default::default()
    })
    .await
    .expect("first request");
    let mut responses = client
        .streaming_pull(ReceiverStream::new(rx))
        .await
        .expect("StreamingPull")
        .into_inner();
    let mut ack_ids = Vec::new();
    while ack_ids.len() < 5 {
        ack_ids.extend(
            next_response(&mut responses)
                .await
                .received_messages
                .into_iter()
                .map(|m| m.ack_id),
        );
    }
    tx.send(ps::StreamingPullRequest {
        ack_ids: ack_ids.clone(),
        ..Default::default()
    })
    .await
    .expect("ack request");
    let confirmed = loop {
        if let Some(c) = next_response(&mut responses).await.acknowledge_confirmation {
            break c;
        }
    };
    assert_eq!(confirmed.ack_ids, ack_ids);
    server.kill(); // at once: the confirmation promised the acks are on disk

    let server = server.restart().await;
    let rest = server.rest();
    rest.post(
        "/v1/projects/p1/topics/eo-acks:publish",
        &json!({"messages": [{"data": "bmV3"}]}),
    )
    .await
    .ok();
    let pulled = rest
        .post(&format!("/v1/{SUB}:pull"), &json!({"maxMessages": 10}))
        .await
        .ok();
    let data: Vec<&Value> = pulled["receivedMessages"]
        .as_array()
        .expect("receivedMessages")
        .iter()
        .map(|m| &m["message"]["data"])
        .collect();
    assert_eq!(data, ["bmV3"], "confirmed acks were lost: {pulled}");
}
