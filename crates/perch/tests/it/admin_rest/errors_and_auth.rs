//! Error bodies, unknown paths, discovery, health and the admin token.

use super::*;

#[tokio::test]
async fn errors_are_google_rpc_status_with_the_http_code() {
    let (server, rest) = with_registry().await;
    create_device(&rest, json!({"id": "dev-1"})).await;

    let message = rest
        .get(&v1("/registries/reg/devices/nope"))
        .await
        .error(404, "NOT_FOUND");
    assert!(
        message.contains(&device_name("reg", "nope")),
        "names the device: {message}"
    );
    let message = rest
        .post(&v1(REGISTRIES), &json!({"id": "goog-x"}))
        .await
        .error(400, "INVALID_ARGUMENT");
    assert!(message.contains("goog-x"), "{message}");
    rest.post(&v1(REGISTRIES), &json!({"id": "reg"}))
        .await
        .error(409, "ALREADY_EXISTS");
    rest.delete(&v1("/registries/reg"))
        .await
        .error(400, "FAILED_PRECONDITION");
    rest.patch(
        &v1("/registries/reg/devices/dev-1"),
        &json!({"blocked": true}),
    )
    .await
    .error(400, "INVALID_ARGUMENT");

    let modify = v1("/registries/reg/devices/dev-1:modifyCloudToDeviceConfig");
    rest.post(&modify, &json!({"binaryData": "YQ=="}))
        .await
        .ok();
    rest.post(&modify, &json!({"binaryData": "Yg=="}))
        .await
        .error(429, "RESOURCE_EXHAUSTED");

    server
        .rest_with_token(None)
        .get(&v1(REGISTRIES))
        .await
        .error(401, "UNAUTHENTICATED");
}

#[tokio::test]
async fn a_malformed_json_body_is_invalid_argument_and_the_server_keeps_serving() {
    let (server, rest) = with_registry().await;
    for body in [
        &b"{\"id\": "[..],
        b"not json",
        b"[1, 2]",
        b"{\"id\": 5}",
        b"\xff\xfe",
    ] {
        let reply = rest
            .send_raw(
                reqwest::Method::POST,
                &v1("/registries/reg/devices"),
                Some(body.to_vec()),
            )
            .await;
        reply.error(400, "INVALID_ARGUMENT");
    }
    // On a client of its own: the server answers before reading the whole body, and then
    // closes that connection.
    let huge = server
        .rest()
        .send_raw(
            reqwest::Method::POST,
            &v1("/registries/reg/devices"),
            Some(vec![b' '; 5 * 1024 * 1024]),
        )
        .await;
    huge.error(400, "INVALID_ARGUMENT");
    let patch = rest
        .send_raw(
            reqwest::Method::PATCH,
            &v1("/registries/reg?updateMask=mqttConfig"),
            Some(b"{\"mqttConfig\": {\"mqttEnabledState\": \"SIDEWAYS\"}}".to_vec()),
        )
        .await;
    patch.error(400, "INVALID_ARGUMENT");
    let listed = rest.get(&v1("/registries/reg/devices")).await.ok();
    assert_eq!(listed, json!({}));
}

#[tokio::test]
async fn unknown_paths_are_404_json() {
    let (_server, rest) = with_registry().await;
    for path in [
        "/nope".to_owned(),
        "/v1/nope".to_owned(),
        v1("/other"),
        v1("/registries/reg/devices/dev-1/what/ever"),
    ] {
        let reply = rest.get(&path).await;
        let message = reply.error(404, "NOT_FOUND");
        assert!(!message.is_empty(), "{path}");
    }
    rest.send(
        reqwest::Method::PUT,
        &v1("/registries/reg"),
        Some(&json!({})),
    )
    .await
    .error(404, "NOT_FOUND");
}

#[tokio::test]
async fn the_discovery_document_is_served_without_a_token_with_our_root_url() {
    let server = TestServer::start(false);
    let anonymous = server.rest_with_token(None);
    for path in [
        "/$discovery/rest?version=v1",
        "/discovery/v1/apis/cloudiot/v1/rest",
    ] {
        let doc = anonymous.get(path).await.ok();
        assert_eq!(
            doc["rootUrl"],
            format!("http://{}/", server.admin),
            "{path}"
        );
        assert_eq!(doc["name"], "cloudiot");
        assert_eq!(doc["version"], "v1");
        assert!(doc["resources"]["projects"].is_object());
    }
}

#[tokio::test]
async fn healthz_answers_without_a_token() {
    let server = TestServer::start(false);
    let reply = server.rest_with_token(None).get("/healthz").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text.trim(), "ok");
}

#[tokio::test]
async fn rest_without_or_with_a_wrong_token_is_401() {
    let server = TestServer::start(false);
    for token in [None, Some("wrong")] {
        let message = server
            .rest_with_token(token)
            .post(&v1(REGISTRIES), &json!({"id": "reg"}))
            .await
            .error(401, "UNAUTHENTICATED");
        assert!(message.contains("admin-token"), "{message}");
    }
    // An unknown path behind the token layer is still refused before routing.
    server
        .rest_with_token(None)
        .get(&v1("/other"))
        .await
        .error(401, "UNAUTHENTICATED");
    assert_eq!(
        server.rest().get(&v1(REGISTRIES)).await.ok(),
        json!({}),
        "nothing was created without the token"
    );
}

#[tokio::test]
async fn a_dev_server_accepts_rest_without_a_token() {
    let server = TestServer::start(true);
    let anonymous = server.rest_with_token(None);
    let r = anonymous
        .post(&v1(REGISTRIES), &json!({"id": "reg"}))
        .await
        .ok();
    assert_eq!(r["id"], "reg");
}
