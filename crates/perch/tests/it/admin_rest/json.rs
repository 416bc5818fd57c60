//! JSON bodies: spellings, int64 and enum encodings, timestamps, masks.

use super::*;

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
