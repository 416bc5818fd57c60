//! Paths, query parameters and custom verbs.

use super::*;

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
