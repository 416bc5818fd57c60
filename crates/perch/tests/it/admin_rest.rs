//! The cloudiot v1 REST transcoding, spoken with plain reqwest the way Google's clients speak
//! it (SPEC.md §2.1–2.2): JSON rules, paths, custom verbs, errors and auth.

use serde_json::{Value, json};

use crate::harness::*;

fn v1(path: &str) -> String {
    format!("/v1/{LOCATION}{path}")
}

const REGISTRIES: &str = "/registries";

/// A server with a registry `reg` made over REST.
async fn with_registry() -> (TestServer, Rest) {
    let server = TestServer::start(false);
    let rest = server.rest();
    rest.post(&v1(REGISTRIES), &json!({"id": "reg"})).await.ok();
    (server, rest)
}

async fn create_device(rest: &Rest, body: Value) -> Value {
    rest.post(&v1("/registries/reg/devices"), &body).await.ok()
}

#[tokio::test]
async fn registry_bodies_accept_camel_case_and_snake_case() {
    let server = TestServer::start(false);
    let rest = server.rest();
    let camel = rest
        .post(
            &v1(REGISTRIES),
            &json!({
                "id": "camel",
                "eventNotificationConfigs": [
                    {"subfolderMatches": "alerts", "pubsubTopicName": "projects/p1/topics/alerts"},
                    {"pubsubTopicName": "projects/p1/topics/all"}
                ],
                "stateNotificationConfig": {"pubsubTopicName": "projects/p1/topics/state"},
                "mqttConfig": {"mqttEnabledState": "MQTT_DISABLED"},
                "httpConfig": {"httpEnabledState": 2},
                "logLevel": "ERROR"
            }),
        )
        .await
        .ok();
    let snake = rest
        .post(
            &v1(REGISTRIES),
            &json!({
                "id": "snake",
                "event_notification_configs": [
                    {"subfolder_matches": "alerts", "pubsub_topic_name": "projects/p1/topics/alerts"},
                    {"pubsub_topic_name": "projects/p1/topics/all"}
                ],
                "state_notification_config": {"pubsub_topic_name": "projects/p1/topics/state"},
                "mqtt_config": {"mqtt_enabled_state": 2},
                "http_config": {"http_enabled_state": "HTTP_DISABLED"},
                "log_level": 20,
                "unknownField": "ignored"
            }),
        )
        .await
        .ok();
    for (r, id) in [(&camel, "camel"), (&snake, "snake")] {
        assert_eq!(r["id"], id);
        assert_eq!(r["name"], registry_name(id));
        assert_eq!(
            r["eventNotificationConfigs"],
            json!([
                {"subfolderMatches": "alerts", "pubsubTopicName": "projects/p1/topics/alerts"},
                {"pubsubTopicName": "projects/p1/topics/all"}
            ]),
            "{r}"
        );
        assert_eq!(
            r["stateNotificationConfig"]["pubsubTopicName"],
            "projects/p1/topics/state"
        );
        assert_eq!(r["mqttConfig"]["mqttEnabledState"], "MQTT_DISABLED", "{r}");
        assert_eq!(r["httpConfig"]["httpEnabledState"], "HTTP_DISABLED", "{r}");
        assert_eq!(r["logLevel"], "ERROR", "{r}");
        assert!(
            r.get("event_notification_configs").is_none(),
            "camelCase out"
        );
    }
    let listed = rest.get(&v1(REGISTRIES)).await.ok();
    let ids: Vec<&str> = listed["deviceRegistries"]
        .as_array()
        .expect("deviceRegistries")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, ["camel", "snake"]);
}

#[tokio::test]
async fn device_json_has_int64_as_strings_enum_names_and_utc_timestamps() {
    let (_server, rest) = with_registry().await;
    let d = create_device(
        &rest,
        json!({
            "id": "dev-1",
            "credentials": [{"publicKey": {"format": 2, "key": es256_public_key_pem()}}],
            "gatewayConfig": {"gatewayType": "NON_GATEWAY"},
            "metadata": {"site": "north"}
        }),
    )
    .await;
    let num_id = d["numId"].as_str().expect("numId is a string");
    assert!(num_id.parse::<u64>().is_ok(), "{num_id}");
    assert_eq!(d["name"], device_name("reg", num_id));
    assert_eq!(d["config"]["version"], "1", "int64 is a string: {d}");
    let updated = d["config"]["cloudUpdateTime"].as_str().expect("time");
    assert!(updated.ends_with('Z'), "{updated}");
    assert_eq!(d["credentials"][0]["publicKey"]["format"], "ES256_PEM");
    assert!(
        d["credentials"][0].get("expirationTime").is_none(),
        "no expiry → no field: {d}"
    );
    assert_eq!(d["gatewayConfig"]["gatewayType"], "NON_GATEWAY");
    assert_eq!(d["metadata"]["site"], "north");
    assert!(d.get("blocked").is_none(), "false is omitted: {d}");
    assert!(d.get("state").is_none(), "no state yet: {d}");
}

#[tokio::test]
async fn enums_in_bodies_accept_numbers_and_names() {
    let (_server, rest) = with_registry().await;
    let by_number = create_device(
        &rest,
        json!({
            "id": "by-number",
            "credentials": [{"publicKey": {"format": 2, "key": es256_public_key_pem()}}],
            "gatewayConfig": {"gatewayType": 1, "gatewayAuthMethod": 3},
            "logLevel": 40
        }),
    )
    .await;
    let by_name = create_device(
        &rest,
        json!({
            "id": "by-name",
            "credentials": [{"publicKey": {"format": "ES256_PEM", "key": es256_public_key_pem()}}],
            "gatewayConfig": {"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_AND_DEVICE_AUTH_TOKEN"},
            "logLevel": "DEBUG"
        }),
    )
    .await;
    for d in [by_number, by_name] {
        assert_eq!(d["credentials"][0]["publicKey"]["format"], "ES256_PEM");
        assert_eq!(d["gatewayConfig"]["gatewayType"], "GATEWAY");
        assert_eq!(
            d["gatewayConfig"]["gatewayAuthMethod"],
            "ASSOCIATION_AND_DEVICE_AUTH_TOKEN"
        );
        assert_eq!(d["logLevel"], "DEBUG");
    }
    let message = rest
        .post(
            &v1("/registries/reg/devices"),
            &json!({"id": "bad-enum", "logLevel": 7}),
        )
        .await
        .error(400, "INVALID_ARGUMENT");
    assert!(message.contains('7'), "names the bad value: {message}");
}

#[tokio::test]
async fn gapic_system_query_parameters_are_ignored() {
    let (_server, rest) = with_registry().await;
    create_device(&rest, json!({"id": "dev-1"})).await;
    let d = rest
        .get(&v1(
            "/registries/reg/devices/dev-1?%24alt=json%3Benum-encoding%3Dint&prettyPrint=false&%24.xgafv=2",
        ))
        .await
        .ok();
    assert_eq!(d["id"], "dev-1");
    let listed = rest
        .get(&v1(
            "/registries/reg/devices?%24alt=json%3Benum-encoding%3Dint&gatewayListOptions.gatewayType=2&fieldMask=gatewayConfig",
        ))
        .await
        .ok();
    let gateway_type = &listed["devices"][0]["gatewayConfig"]["gatewayType"];
    assert!(
        *gateway_type == json!("NON_GATEWAY") || *gateway_type == json!(2),
        "{listed}"
    );
    let created = rest
        .post(
            &v1("/registries/reg/devices?%24alt=json%3Benum-encoding%3Dint"),
            &json!({"id": "dev-2", "gatewayConfig": {"gatewayType": 1}}),
        )
        .await
        .ok();
    assert_eq!(created["id"], "dev-2");
}

#[tokio::test]
async fn a_numeric_id_in_the_path_names_the_device() {
    let (_server, rest) = with_registry().await;
    let d = create_device(&rest, json!({"id": "dev-1"})).await;
    let num_id = d["numId"].as_str().expect("numId").to_owned();
    let by_num = rest
        .get(&v1(&format!("/registries/reg/devices/{num_id}")))
        .await
        .ok();
    assert_eq!(by_num["id"], "dev-1");

    // GAPIC PATCHes the whole fetched device to …/devices/{numId}?updateMask=…
    let mut whole = by_num.clone();
    whole["blocked"] = json!(true);
    whole["metadata"] = json!({"ignored": "yes"});
    whole["lastErrorStatus"] = json!({});
    whole["config"] = json!({"version": "7", "binaryData": "aWdub3JlZA=="});
    whole["credentials"] = json!([{
        "publicKey": {"format": "ES256_PEM", "key": es256_public_key_pem()},
        "expirationTime": "1970-01-01T00:00:00Z"
    }]);
    let patched = rest
        .patch(
            &v1(&format!(
                "/registries/reg/devices/{num_id}?updateMask=credentials"
            )),
            &whole,
        )
        .await
        .ok();
    assert_eq!(patched["credentials"].as_array().map(Vec::len), Some(1));
    assert!(
        patched["credentials"][0].get("expirationTime").is_none(),
        "the epoch means no expiry: {patched}"
    );
    assert!(
        patched.get("blocked").is_none(),
        "outside the mask: {patched}"
    );
    assert!(
        patched.get("metadata").is_none(),
        "outside the mask: {patched}"
    );
    assert_eq!(patched["config"]["version"], "1", "output-only: {patched}");

    rest.delete(&v1(&format!("/registries/reg/devices/{num_id}")))
        .await
        .ok();
    rest.get(&v1("/registries/reg/devices/dev-1"))
        .await
        .error(404, "NOT_FOUND");
}

#[tokio::test]
async fn ids_with_every_allowed_punctuation_work_in_paths() {
    let (_server, rest) = with_registry().await;
    let id = "dev.a~b%c+d_e-f";
    let d = create_device(&rest, json!({"id": id})).await;
    assert_eq!(d["id"], id);
    let got = rest
        .get(&v1("/registries/reg/devices/dev.a~b%25c+d_e-f"))
        .await
        .ok();
    assert_eq!(got["id"], id);
    let config = rest
        .post(
            &v1("/registries/reg/devices/dev.a~b%25c+d_e-f:modifyCloudToDeviceConfig"),
            &json!({"binaryData": ""}),
        )
        .await
        .ok();
    assert_eq!(config["version"], "2");
    assert!(
        config.get("binaryData").is_none(),
        "empty bytes are omitted"
    );
}

#[tokio::test]
async fn registry_update_masks_accept_both_spellings() {
    let (_server, rest) = with_registry().await;
    let events = json!([{"pubsubTopicName": "projects/p1/topics/t"}]);
    for mask in ["eventNotificationConfigs", "event_notification_config"] {
        let r = rest
            .patch(
                &v1(&format!("/registries/reg?updateMask={mask}")),
                &json!({"eventNotificationConfigs": events}),
            )
            .await
            .ok();
        assert_eq!(r["eventNotificationConfigs"], events, "{mask}");
    }
    let message = rest
        .patch(
            &v1("/registries/reg?updateMask=eventNotificationConfigs"),
            &json!({"eventNotificationConfigs": [{"pubsubTopicName": "not-a-topic"}]}),
        )
        .await
        .error(400, "INVALID_ARGUMENT");
    assert!(message.contains("not-a-topic"), "{message}");
}

#[tokio::test]
async fn group_segments_are_transparent() {
    let (_server, rest) = with_registry().await;
    create_device(&rest, json!({"id": "dev-1"})).await;
    let group = "/registries/reg/groups/g1";
    let d = rest.get(&v1(&format!("{group}/devices/dev-1"))).await.ok();
    assert_eq!(d["id"], "dev-1");
    let listed = rest.get(&v1(&format!("{group}/devices"))).await.ok();
    assert_eq!(listed["devices"][0]["id"], "dev-1");
    let config = rest
        .post(
            &v1(&format!("{group}/devices/dev-1:modifyCloudToDeviceConfig")),
            &json!({"binaryData": "Zmlyc3Q="}),
        )
        .await
        .ok();
    assert_eq!(config["version"], "2");
    let versions = rest
        .get(&v1(&format!("{group}/devices/dev-1/configVersions")))
        .await
        .ok();
    assert_eq!(versions["deviceConfigs"][0]["version"], "2");
    let policy = rest
        .post(&v1(&format!("{group}:getIamPolicy")), &json!({}))
        .await
        .ok();
    assert_eq!(policy["version"], 1);
    let patched = rest
        .patch(
            &v1(&format!("{group}/devices/dev-1?updateMask=blocked")),
            &json!({"blocked": true}),
        )
        .await
        .ok();
    assert_eq!(patched["blocked"], true);
}

#[tokio::test]
async fn custom_verbs_map_to_their_methods() {
    let (_server, rest) = with_registry().await;
    create_device(
        &rest,
        json!({"id": "gw-1", "gatewayConfig": {"gatewayType": "GATEWAY"}}),
    )
    .await;
    create_device(&rest, json!({"id": "dev-1"})).await;
    let device = v1("/registries/reg/devices/dev-1");

    // python-docs-samples' end-to-end server: snake_case, a number for the int64.
    let config = rest
        .post(
            &format!("{device}:modifyCloudToDeviceConfig"),
            &json!({"version_to_update": 0, "binary_data": "aGVsbG8="}),
        )
        .await
        .ok();
    assert_eq!(config["version"], "2");
    assert_eq!(config["binaryData"], "aGVsbG8=");
    assert!(
        config["cloudUpdateTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    let versions = rest
        .get(&format!("{device}/configVersions?numVersions=1"))
        .await
        .ok();
    assert_eq!(versions["deviceConfigs"].as_array().map(Vec::len), Some(1));
    let states = rest.get(&format!("{device}/states")).await.ok();
    assert_eq!(states, json!({}), "an empty list is an empty object");

    let message = rest
        .post(
            &format!("{device}:sendCommandToDevice"),
            &json!({"binaryData": "cmVib290", "subfolder": "ops"}),
        )
        .await
        .error(400, "FAILED_PRECONDITION");
    assert!(message.contains("dev-1"), "{message}");

    let bind = json!({"gatewayId": "gw-1", "deviceId": "dev-1"});
    let bound = rest
        .post(&v1("/registries/reg:bindDeviceToGateway"), &bind)
        .await
        .ok();
    assert_eq!(bound, json!({}));
    let listed = rest
        .get(&v1(
            "/registries/reg/devices?gatewayListOptions.associationsGatewayId=gw-1",
        ))
        .await
        .ok();
    assert_eq!(listed["devices"][0]["id"], "dev-1");
    rest.post(&v1("/registries/reg:unbindDeviceFromGateway"), &bind)
        .await
        .ok();
    rest.post(&v1("/registries/reg:unbindDeviceFromGateway"), &bind)
        .await
        .error(404, "NOT_FOUND");

    let policy = rest
        .post(&v1("/registries/reg:getIamPolicy"), &json!({}))
        .await
        .ok();
    assert_eq!(policy, json!({"version": 1, "etag": "cGVyY2g="}));
    let set = rest
        .post(
            &v1("/registries/reg:setIamPolicy"),
            &json!({"policy": {"bindings": [{"role": "roles/viewer", "members": ["user:a@example.com"]}]}}),
        )
        .await
        .ok();
    assert_eq!(set["bindings"][0]["role"], "roles/viewer");
    let tested = rest
        .post(
            &v1("/registries/reg:testIamPermissions"),
            &json!({"permissions": ["cloudiot.devices.get"]}),
        )
        .await
        .ok();
    assert_eq!(tested, json!({"permissions": ["cloudiot.devices.get"]}));

    rest.post(&format!("{device}:noSuchVerb"), &json!({}))
        .await
        .error(404, "NOT_FOUND");
}

#[tokio::test]
async fn config_version_to_update_accepts_a_string_and_url_safe_base64() {
    let (_server, rest) = with_registry().await;
    create_device(&rest, json!({"id": "dev-1"})).await;
    // 0xfb 0xff is "+/8=" in standard base64 and "-_8" URL-safe without padding.
    let config = rest
        .post(
            &v1("/registries/reg/devices/dev-1:modifyCloudToDeviceConfig"),
            &json!({"versionToUpdate": "1", "binaryData": "-_8"}),
        )
        .await
        .ok();
    assert_eq!(config["version"], "2");
    assert_eq!(config["binaryData"], "+/8=", "output is standard, padded");
}

#[tokio::test]
async fn timestamps_with_an_offset_are_accepted_and_returned_in_utc() {
    let (_server, rest) = with_registry().await;
    let d = create_device(
        &rest,
        json!({
            "id": "dev-1",
            "credentials": [{
                "publicKey": {"format": "RSA_PEM", "key": RSA_PUBLIC_KEY_PEM},
                "expirationTime": "2030-01-01T02:00:00+02:00"
            }]
        }),
    )
    .await;
    assert_eq!(
        d["credentials"][0]["expirationTime"], "2030-01-01T00:00:00Z",
        "{d}"
    );
    assert_eq!(d["credentials"][0]["publicKey"]["format"], "RSA_PEM");
}

#[tokio::test]
async fn list_devices_queries_use_repeated_keys_masks_and_pages() {
    let (_server, rest) = with_registry().await;
    let mut num_ids = Vec::new();
    for id in ["dev-1", "dev-2", "dev-3"] {
        let d = create_device(&rest, json!({"id": id, "blocked": true})).await;
        num_ids.push(d["numId"].as_str().expect("numId").to_owned());
    }
    create_device(
        &rest,
        json!({"id": "gw-1", "gatewayConfig": {"gatewayType": "GATEWAY"}}),
    )
    .await;

    let by_ids = rest
        .get(&v1(
            "/registries/reg/devices?deviceIds=dev-3&deviceIds=dev-1",
        ))
        .await
        .ok();
    let ids: Vec<&str> = by_ids["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, ["dev-1", "dev-3"]);
    assert!(by_ids["devices"][0].get("blocked").is_none(), "no mask");

    let by_num_ids = rest
        .get(&v1(&format!(
            "/registries/reg/devices?deviceNumIds={}&fieldMask=blocked",
            num_ids[1]
        )))
        .await
        .ok();
    assert_eq!(by_num_ids["devices"][0]["id"], "dev-2");
    assert_eq!(by_num_ids["devices"][0]["blocked"], true, "masked in");

    for gateway_type in ["GATEWAY", "1"] {
        let gateways = rest
            .get(&v1(&format!(
                "/registries/reg/devices?gatewayListOptions.gatewayType={gateway_type}"
            )))
            .await
            .ok();
        assert_eq!(gateways["devices"].as_array().map(Vec::len), Some(1));
        assert_eq!(gateways["devices"][0]["id"], "gw-1");
    }

    let first = rest
        .get(&v1("/registries/reg/devices?pageSize=3"))
        .await
        .ok();
    assert_eq!(first["devices"].as_array().map(Vec::len), Some(3));
    let token = first["nextPageToken"].as_str().expect("a next page");
    let second = rest
        .get(&v1(&format!(
            "/registries/reg/devices?pageSize=3&pageToken={token}"
        )))
        .await
        .ok();
    assert_eq!(second["devices"][0]["id"], "gw-1");
    assert!(second.get("nextPageToken").is_none(), "{second}");

    rest.get(&v1("/registries/reg/devices?pageToken=garbage"))
        .await
        .error(400, "INVALID_ARGUMENT");
    rest.get(&v1("/registries/reg/devices?pageSize=many"))
        .await
        .error(400, "INVALID_ARGUMENT");
}

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
