//! Every DeviceManager gRPC method against an in-process server: happy paths and errors
//! (SPEC.md §2).

use std::time::{Duration, Instant};

use pbjson_types::FieldMask;
use perch_proto::google::iam::v1 as iam;
use perch_proto::iot as pb;
use tonic::{Code, Status};

use crate::harness::*;

/// Asserts that a call failed with `code`; returns the message.
fn expect_code<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, Status>,
    code: Code,
) -> String {
    match result {
        Ok(response) => panic!("expected {code:?}, got {:?}", response.into_inner()),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            status.message().to_owned()
        }
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

/// A server, a client and one empty registry `reg`.
async fn with_registry() -> (TestServer, Grpc) {
    let server = TestServer::start(false);
    let mut client = server.grpc_client().await;
    create_registry(&mut client, "reg").await;
    (server, client)
}

async fn get_device(client: &mut Grpc, device: &str) -> pb::Device {
    client
        .get_device(pb::GetDeviceRequest {
            name: device_name("reg", device),
            field_mask: None,
        })
        .await
        .unwrap_or_else(|s| panic!("get {device}: {s:?}"))
        .into_inner()
}

async fn list_devices(client: &mut Grpc, request: pb::ListDevicesRequest) -> Vec<String> {
    let response = client
        .list_devices(pb::ListDevicesRequest {
            parent: registry_name("reg"),
            ..request
        })
        .await
        .unwrap_or_else(|s| panic!("list devices: {s:?}"))
        .into_inner();
    assert_eq!(response.next_page_token, "", "one page expected");
    response.devices.into_iter().map(|d| d.id).collect()
}

fn gateway_filter(filter: pb::gateway_list_options::Filter) -> pb::ListDevicesRequest {
    pb::ListDevicesRequest {
        gateway_list_options: Some(pb::GatewayListOptions {
            filter: Some(filter),
        }),
        ..Default::default()
    }
}

async fn modify_config(
    client: &mut Grpc,
    device: &str,
    version_to_update: i64,
    data: &[u8],
) -> Result<tonic::Response<pb::DeviceConfig>, Status> {
    client
        .modify_cloud_to_device_config(pb::ModifyCloudToDeviceConfigRequest {
            name: device_name("reg", device),
            version_to_update,
            binary_data: data.to_vec(),
        })
        .await
}

async fn config_versions(client: &mut Grpc, device: &str, num_versions: i32) -> Vec<i64> {
    client
        .list_device_config_versions(pb::ListDeviceConfigVersionsRequest {
            name: device_name("reg", device),
            num_versions,
        })
        .await
        .unwrap_or_else(|s| panic!("config versions of {device}: {s:?}"))
        .into_inner()
        .device_configs
        .iter()
        .map(|c| c.version)
        .collect()
}

async fn bind(client: &mut Grpc, gateway: &str, device: &str) -> Result<(), Status> {
    client
        .bind_device_to_gateway(pb::BindDeviceToGatewayRequest {
            parent: registry_name("reg"),
            gateway_id: gateway.into(),
            device_id: device.into(),
        })
        .await
        .map(|_| ())
}

async fn unbind(client: &mut Grpc, gateway: &str, device: &str) -> Result<(), Status> {
    client
        .unbind_device_from_gateway(pb::UnbindDeviceFromGatewayRequest {
            parent: registry_name("reg"),
            gateway_id: gateway.into(),
            device_id: device.into(),
        })
        .await
        .map(|_| ())
}

// ----- registries -----

#[tokio::test]
async fn registry_create_get_list_delete_round_trip() {
    let server = TestServer::start(false);
    let mut client = server.grpc_client().await;
    let events = vec![
        pb::EventNotificationConfig {
            subfolder_matches: "alerts".into(),
            pubsub_topic_name: "projects/p1/topics/alerts".into(),
        },
        pb::EventNotificationConfig {
            subfolder_matches: String::new(),
            pubsub_topic_name: "projects/p1/topics/all".into(),
        },
    ];
    let created = client
        .create_device_registry(pb::CreateDeviceRegistryRequest {
            parent: LOCATION.into(),
            device_registry: Some(pb::DeviceRegistry {
                id: "reg-a".into(),
                event_notification_configs: events.clone(),
                state_notification_config: Some(pb::StateNotificationConfig {
                    pubsub_topic_name: "projects/p1/topics/state".into(),
                }),
                mqtt_config: Some(pb::MqttConfig {
                    mqtt_enabled_state: pb::MqttState::MqttDisabled as i32,
                }),
                log_level: pb::LogLevel::Info as i32,
                ..Default::default()
            }),
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.id, "reg-a");
    assert_eq!(created.name, registry_name("reg-a"));
    assert_eq!(created.event_notification_configs, events, "order is kept");
    assert_eq!(
        created.mqtt_config.map(|c| c.mqtt_enabled_state),
        Some(pb::MqttState::MqttDisabled as i32)
    );
    assert_eq!(
        created.http_config.map(|c| c.http_enabled_state),
        Some(pb::HttpState::HttpEnabled as i32),
        "unspecified reads back as enabled"
    );

    let got = client
        .get_device_registry(pb::GetDeviceRegistryRequest {
            name: registry_name("reg-a"),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got, created);

    create_registry(&mut client, "reg-b").await;
    let listed = client
        .list_device_registries(pb::ListDeviceRegistriesRequest {
            parent: LOCATION.into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<_> = listed
        .device_registries
        .iter()
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(ids, ["reg-a", "reg-b"]);
    assert_eq!(listed.next_page_token, "");

    client
        .delete_device_registry(pb::DeleteDeviceRegistryRequest {
            name: registry_name("reg-a"),
        })
        .await
        .expect("delete");
    let message = expect_code(
        client
            .get_device_registry(pb::GetDeviceRegistryRequest {
                name: registry_name("reg-a"),
            })
            .await,
        Code::NotFound,
    );
    assert!(message.contains(&registry_name("reg-a")), "{message}");
}

#[tokio::test]
async fn list_registries_pages_and_refuses_a_bad_page_token() {
    let server = TestServer::start(false);
    let mut client = server.grpc_client().await;
    for id in ["reg-1", "reg-2", "reg-3"] {
        create_registry(&mut client, id).await;
    }
    let mut ids = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_device_registries(pb::ListDeviceRegistriesRequest {
                parent: LOCATION.into(),
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        assert!(page.device_registries.len() <= 2);
        ids.extend(page.device_registries.into_iter().map(|r| r.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(ids, ["reg-1", "reg-2", "reg-3"]);
    assert_eq!(pages, 2);
    expect_code(
        client
            .list_device_registries(pb::ListDeviceRegistriesRequest {
                parent: LOCATION.into(),
                page_size: 2,
                page_token: "garbage!".into(),
            })
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn creating_a_registry_twice_is_already_exists() {
    let (_server, mut client) = with_registry().await;
    let message = expect_code(
        client
            .create_device_registry(pb::CreateDeviceRegistryRequest {
                parent: LOCATION.into(),
                device_registry: Some(pb::DeviceRegistry {
                    id: "reg".into(),
                    ..Default::default()
                }),
            })
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(
        message,
        "Resource already exists in the project (resource=reg)."
    );
}

#[tokio::test]
async fn registry_ids_breaking_the_id_rule_are_invalid_argument() {
    let server = TestServer::start(false);
    let mut client = server.grpc_client().await;
    let too_long = format!("r{}", "x".repeat(255));
    for id in ["goog-x", "1abc", "ab", "a:b:c", too_long.as_str()] {
        let message = expect_code(
            client
                .create_device_registry(pb::CreateDeviceRegistryRequest {
                    parent: LOCATION.into(),
                    device_registry: Some(pb::DeviceRegistry {
                        id: id.into(),
                        ..Default::default()
                    }),
                })
                .await,
            Code::InvalidArgument,
        );
        assert!(message.contains(id), "{id}: {message}");
    }
    // The longest valid id is 255 characters.
    create_registry(&mut client, &too_long[..255]).await;
}

#[tokio::test]
async fn create_registry_under_a_malformed_parent_is_invalid_argument() {
    let server = TestServer::start(false);
    let mut client = server.grpc_client().await;
    let message = expect_code(
        client
            .create_device_registry(pb::CreateDeviceRegistryRequest {
                parent: "projects/p1".into(),
                device_registry: Some(pb::DeviceRegistry {
                    id: "reg".into(),
                    ..Default::default()
                }),
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(message.contains("parent"), "{message}");
}

#[tokio::test]
async fn update_registry_changes_only_the_masked_fields() {
    let (_server, mut client) = with_registry().await;
    let updated = client
        .update_device_registry(pb::UpdateDeviceRegistryRequest {
            device_registry: Some(pb::DeviceRegistry {
                name: registry_name("reg"),
                mqtt_config: Some(pb::MqttConfig {
                    mqtt_enabled_state: pb::MqttState::MqttDisabled as i32,
                }),
                http_config: Some(pb::HttpConfig {
                    http_enabled_state: pb::HttpState::HttpDisabled as i32,
                }),
                ..Default::default()
            }),
            update_mask: mask(&["mqttConfig"]),
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(
        updated.mqtt_config.map(|c| c.mqtt_enabled_state),
        Some(pb::MqttState::MqttDisabled as i32)
    );
    assert_eq!(
        updated.http_config.map(|c| c.http_enabled_state),
        Some(pb::HttpState::HttpEnabled as i32),
        "httpConfig is outside the mask"
    );
}

#[tokio::test]
async fn update_registry_with_empty_mask_is_invalid_argument() {
    let (_server, mut client) = with_registry().await;
    for update_mask in [None, mask(&[])] {
        expect_code(
            client
                .update_device_registry(pb::UpdateDeviceRegistryRequest {
                    device_registry: Some(pb::DeviceRegistry {
                        name: registry_name("reg"),
                        ..Default::default()
                    }),
                    update_mask,
                })
                .await,
            Code::InvalidArgument,
        );
    }
}

#[tokio::test]
async fn update_registry_with_an_immutable_path_is_invalid_argument() {
    let (_server, mut client) = with_registry().await;
    for path in ["id", "name"] {
        let message = expect_code(
            client
                .update_device_registry(pb::UpdateDeviceRegistryRequest {
                    device_registry: Some(pb::DeviceRegistry {
                        name: registry_name("reg"),
                        id: "other".into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&[path]),
                })
                .await,
            Code::InvalidArgument,
        );
        assert!(message.contains(path), "{message}");
    }
}

#[tokio::test]
async fn deleting_a_registry_with_devices_is_failed_precondition() {
    let (_server, mut client) = with_registry().await;
    create_device(&mut client, "reg", device("dev-1")).await;
    let delete = pb::DeleteDeviceRegistryRequest {
        name: registry_name("reg"),
    };
    expect_code(
        client.delete_device_registry(delete.clone()).await,
        Code::FailedPrecondition,
    );
    client
        .delete_device(pb::DeleteDeviceRequest {
            name: device_name("reg", "dev-1"),
        })
        .await
        .expect("delete device");
    client
        .delete_device_registry(delete)
        .await
        .expect("an empty registry can be deleted");
}

#[tokio::test]
async fn deleting_an_unknown_registry_is_not_found() {
    let server = TestServer::start(false);
    let mut client = server.grpc_client().await;
    let message = expect_code(
        client
            .delete_device_registry(pb::DeleteDeviceRegistryRequest {
                name: registry_name("nope"),
            })
            .await,
        Code::NotFound,
    );
    assert!(message.contains("nope"), "{message}");
}

// ----- devices -----

#[tokio::test]
async fn create_device_assigns_a_num_id_and_config_version_1() {
    let (_server, mut client) = with_registry().await;
    let key = es256_public_key_pem();
    let mut new = device("dev-1");
    new.credentials = vec![credential(pb::PublicKeyFormat::Es256Pem, &key)];
    new.metadata.insert("site".into(), "north".into());
    new.config = Some(pb::DeviceConfig {
        binary_data: b"hello".to_vec(),
        ..Default::default()
    });
    let created = create_device(&mut client, "reg", new).await;
    assert_eq!(created.id, "dev-1");
    assert!(
        (1_000_000_000_000_000..1 << 53).contains(&created.num_id),
        "16 digits below 2^53: {}",
        created.num_id
    );
    assert_eq!(
        created.name,
        device_name("reg", &created.num_id.to_string()),
        "the name ends in the numId"
    );
    let config = created.config.clone().expect("config");
    assert_eq!(config.version, 1);
    assert_eq!(config.binary_data, b"hello");
    assert!(config.cloud_update_time.is_some());
    assert_eq!(created.credentials.len(), 1);
    assert_eq!(
        created.metadata.get("site").map(String::as_str),
        Some("north")
    );
    assert_eq!(
        created.gateway_config.as_ref().map(|g| g.gateway_type),
        Some(pb::GatewayType::NonGateway as i32),
        "unspecified is non-gateway"
    );

    let by_id = get_device(&mut client, "dev-1").await;
    let by_num_id = get_device(&mut client, &created.num_id.to_string()).await;
    assert_eq!(by_id, created);
    assert_eq!(by_num_id, created);
}

#[tokio::test]
async fn create_device_with_a_name_or_config_version_is_invalid_argument() {
    let (_server, mut client) = with_registry().await;
    let mut named = device("dev-1");
    named.name = device_name("reg", "dev-1");
    let mut versioned = device("dev-2");
    versioned.config = Some(pb::DeviceConfig {
        version: 3,
        ..Default::default()
    });
    for d in [named, versioned] {
        expect_code(
            client
                .create_device(pb::CreateDeviceRequest {
                    parent: registry_name("reg"),
                    device: Some(d),
                })
                .await,
            Code::InvalidArgument,
        );
    }
}

#[tokio::test]
async fn creating_a_device_twice_is_already_exists() {
    let (_server, mut client) = with_registry().await;
    create_device(&mut client, "reg", device("dev-1")).await;
    let message = expect_code(
        client
            .create_device(pb::CreateDeviceRequest {
                parent: registry_name("reg"),
                device: Some(device("dev-1")),
            })
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(
        message,
        "Resource already exists in the project (resource=dev-1)."
    );
}

#[tokio::test]
async fn device_ids_breaking_the_id_rule_are_invalid_argument() {
    let (_server, mut client) = with_registry().await;
    let too_long = format!("d{}", "x".repeat(255));
    for id in ["goog-x", "1abc", "ab", "aa:bb:cc", too_long.as_str()] {
        let message = expect_code(
            client
                .create_device(pb::CreateDeviceRequest {
                    parent: registry_name("reg"),
                    device: Some(device(id)),
                })
                .await,
            Code::InvalidArgument,
        );
        assert!(message.contains("device.id"), "{id}: {message}");
        assert!(message.contains(id), "{id}: {message}");
    }
    create_device(&mut client, "reg", device(&too_long[..255])).await;
}

#[tokio::test]
async fn creating_a_device_in_an_unknown_registry_is_not_found() {
    let server = TestServer::start(false);
    let mut client = server.grpc_client().await;
    let message = expect_code(
        client
            .create_device(pb::CreateDeviceRequest {
                parent: registry_name("nope"),
                device: Some(device("dev-1")),
            })
            .await,
        Code::NotFound,
    );
    assert!(message.contains(&registry_name("nope")), "{message}");
}

#[tokio::test]
async fn getting_an_unknown_device_is_not_found_naming_the_device() {
    let (_server, mut client) = with_registry().await;
    for id in ["nope", "1234567890123456"] {
        let message = expect_code(
            client
                .get_device(pb::GetDeviceRequest {
                    name: device_name("reg", id),
                    field_mask: None,
                })
                .await,
            Code::NotFound,
        );
        assert!(
            message.contains(&device_name("reg", id)),
            "the message names the device: {message}"
        );
    }
}

#[tokio::test]
async fn get_device_with_a_field_mask_returns_only_those_fields() {
    let (_server, mut client) = with_registry().await;
    let mut new = device("dev-1");
    new.metadata.insert("k".into(), "v".into());
    new.blocked = true;
    create_device(&mut client, "reg", new).await;
    let got = client
        .get_device(pb::GetDeviceRequest {
            name: device_name("reg", "dev-1"),
            field_mask: mask(&["metadata", "numId"]),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.metadata.get("k").map(String::as_str), Some("v"));
    assert_ne!(got.num_id, 0);
    assert!(!got.blocked, "blocked is outside the mask");
    assert!(got.config.is_none(), "config is outside the mask");
    assert!(got.gateway_config.is_none());
    assert_eq!(got.id, "");

    expect_code(
        client
            .get_device(pb::GetDeviceRequest {
                name: device_name("reg", "dev-1"),
                field_mask: mask(&["no_such_field"]),
            })
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn credentials_in_every_format_are_accepted() {
    let (_server, mut client) = with_registry().await;
    let mut new = device("dev-1");
    new.credentials = vec![
        credential(pb::PublicKeyFormat::Es256Pem, &es256_public_key_pem()),
        credential(pb::PublicKeyFormat::RsaPem, RSA_PUBLIC_KEY_PEM),
        credential(pb::PublicKeyFormat::Es256X509Pem, &self_signed_es256_cert()),
    ];
    let created = create_device(&mut client, "reg", new).await;
    let formats: Vec<i32> = created
        .credentials
        .iter()
        .map(|c| match &c.credential {
            Some(pb::device_credential::Credential::PublicKey(k)) => k.format,
            None => 0,
        })
        .collect();
    assert_eq!(
        formats,
        [
            pb::PublicKeyFormat::Es256Pem as i32,
            pb::PublicKeyFormat::RsaPem as i32,
            pb::PublicKeyFormat::Es256X509Pem as i32
        ]
    );
}

#[tokio::test]
async fn malformed_or_mismatched_keys_are_invalid_argument() {
    let (_server, mut client) = with_registry().await;
    let es256 = es256_public_key_pem();
    let cases = [
        (pb::PublicKeyFormat::Es256Pem, "not a key".to_owned()),
        (
            pb::PublicKeyFormat::Es256Pem,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_owned(),
        ),
        (pb::PublicKeyFormat::RsaPem, es256.clone()),
        (pb::PublicKeyFormat::Es256Pem, RSA_PUBLIC_KEY_PEM.to_owned()),
        (pb::PublicKeyFormat::Es256X509Pem, es256.clone()),
        (pb::PublicKeyFormat::UnspecifiedPublicKeyFormat, es256),
    ];
    for (i, (format, key)) in cases.into_iter().enumerate() {
        let mut new = device(&format!("dev-{i}"));
        new.credentials = vec![credential(format, &key)];
        expect_code(
            client
                .create_device(pb::CreateDeviceRequest {
                    parent: registry_name("reg"),
                    device: Some(new),
                })
                .await,
            Code::InvalidArgument,
        );
    }
}

#[tokio::test]
async fn a_fourth_credential_is_invalid_argument() {
    let (_server, mut client) = with_registry().await;
    let four: Vec<_> = (0..4)
        .map(|_| credential(pb::PublicKeyFormat::Es256Pem, &es256_public_key_pem()))
        .collect();
    let mut new = device("dev-1");
    new.credentials = four.clone();
    expect_code(
        client
            .create_device(pb::CreateDeviceRequest {
                parent: registry_name("reg"),
                device: Some(new),
            })
            .await,
        Code::InvalidArgument,
    );

    let mut three = device("dev-1");
    three.credentials = four[..3].to_vec();
    create_device(&mut client, "reg", three).await;
    let mut patch = device("dev-1");
    patch.name = device_name("reg", "dev-1");
    patch.credentials = four;
    expect_code(
        client
            .update_device(pb::UpdateDeviceRequest {
                device: Some(patch),
                update_mask: mask(&["credentials"]),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(get_device(&mut client, "dev-1").await.credentials.len(), 3);
}

#[tokio::test]
async fn update_device_changes_only_the_masked_fields() {
    let (_server, mut client) = with_registry().await;
    let mut new = device("dev-1");
    new.metadata.insert("k".into(), "v".into());
    let created = create_device(&mut client, "reg", new).await;

    // What GAPIC sends: the whole fetched device, output-only fields included.
    let mut patch = created.clone();
    patch.blocked = true;
    patch.metadata.clear();
    patch.metadata.insert("other".into(), "x".into());
    patch.num_id = 42;
    patch.config = Some(pb::DeviceConfig {
        version: 9,
        binary_data: b"ignored".to_vec(),
        ..Default::default()
    });
    patch.gateway_config = Some(pb::GatewayConfig {
        gateway_type: pb::GatewayType::Gateway as i32,
        ..Default::default()
    });
    let updated = client
        .update_device(pb::UpdateDeviceRequest {
            device: Some(patch),
            update_mask: mask(&["blocked"]),
        })
        .await
        .expect("update")
        .into_inner();
    assert!(updated.blocked);
    assert_eq!(
        updated.metadata, created.metadata,
        "metadata is outside the mask"
    );
    assert_eq!(updated.num_id, created.num_id);
    assert_eq!(updated.config, created.config);
    assert_eq!(updated.gateway_config, created.gateway_config);
    assert_eq!(get_device(&mut client, "dev-1").await, updated);

    // A camelCase mask naming two fields, through the numeric id.
    let mut patch = device("");
    patch.name = device_name("reg", &created.num_id.to_string());
    patch.metadata.insert("new".into(), "1".into());
    patch.log_level = pb::LogLevel::Debug as i32;
    let updated = client
        .update_device(pb::UpdateDeviceRequest {
            device: Some(patch),
            update_mask: mask(&["metadata,logLevel"]),
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.metadata.len(), 1, "the map is replaced");
    assert_eq!(updated.metadata.get("new").map(String::as_str), Some("1"));
    assert_eq!(updated.log_level, pb::LogLevel::Debug as i32);
    assert!(updated.blocked, "blocked is outside the mask now");
}

#[tokio::test]
async fn update_device_with_empty_mask_is_invalid_argument() {
    let (_server, mut client) = with_registry().await;
    create_device(&mut client, "reg", device("dev-1")).await;
    for update_mask in [None, mask(&[])] {
        let mut patch = device("dev-1");
        patch.name = device_name("reg", "dev-1");
        patch.blocked = true;
        expect_code(
            client
                .update_device(pb::UpdateDeviceRequest {
                    device: Some(patch),
                    update_mask,
                })
                .await,
            Code::InvalidArgument,
        );
    }
    assert!(!get_device(&mut client, "dev-1").await.blocked);
}

#[tokio::test]
async fn update_device_with_an_immutable_path_is_invalid_argument() {
    let (_server, mut client) = with_registry().await;
    create_device(&mut client, "reg", device("dev-1")).await;
    for path in [
        "id",
        "num_id",
        "config",
        "gateway_config.gateway_type",
        "last_heartbeat_time",
    ] {
        let mut patch = device("dev-1");
        patch.name = device_name("reg", "dev-1");
        let message = expect_code(
            client
                .update_device(pb::UpdateDeviceRequest {
                    device: Some(patch),
                    update_mask: mask(&[path]),
                })
                .await,
            Code::InvalidArgument,
        );
        assert!(message.contains(path), "{message}");
    }
}

#[tokio::test]
async fn updating_an_unknown_device_is_not_found() {
    let (_server, mut client) = with_registry().await;
    let mut patch = device("nope");
    patch.name = device_name("reg", "nope");
    expect_code(
        client
            .update_device(pb::UpdateDeviceRequest {
                device: Some(patch),
                update_mask: mask(&["blocked"]),
            })
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn delete_device_then_get_is_not_found() {
    let (_server, mut client) = with_registry().await;
    create_device(&mut client, "reg", device("dev-1")).await;
    let delete = pb::DeleteDeviceRequest {
        name: device_name("reg", "dev-1"),
    };
    client.delete_device(delete.clone()).await.expect("delete");
    expect_code(
        client
            .get_device(pb::GetDeviceRequest {
                name: device_name("reg", "dev-1"),
                field_mask: None,
            })
            .await,
        Code::NotFound,
    );
    expect_code(client.delete_device(delete).await, Code::NotFound);
    // The id is free again.
    create_device(&mut client, "reg", device("dev-1")).await;
}

#[tokio::test]
async fn creating_the_same_device_concurrently_admits_exactly_one() {
    let (_server, client) = with_registry().await;
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .create_device(pb::CreateDeviceRequest {
                        parent: registry_name("reg"),
                        device: Some(device("racer")),
                    })
                    .await
                    .map(|r| r.into_inner().num_id)
            })
        })
        .collect();
    let mut created = Vec::new();
    for attempt in attempts {
        match attempt.await.expect("join") {
            Ok(num_id) => created.push(num_id),
            Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status:?}"),
        }
    }
    assert_eq!(created.len(), 1, "{created:?}");
}

#[tokio::test]
async fn a_num_id_names_a_device_only_in_its_own_registry() {
    let (_server, mut client) = with_registry().await;
    create_registry(&mut client, "other").await;
    let mine = create_device(&mut client, "reg", device("dev-1")).await;
    let theirs = create_device(&mut client, "other", device("dev-1")).await;
    assert_ne!(mine.num_id, theirs.num_id, "numIds are globally unique");
    expect_code(
        client
            .get_device(pb::GetDeviceRequest {
                name: device_name("reg", &theirs.num_id.to_string()),
                field_mask: None,
            })
            .await,
        Code::NotFound,
    );
    let listed = list_devices(
        &mut client,
        pb::ListDevicesRequest {
            device_num_ids: vec![theirs.num_id, mine.num_id],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(listed, ["dev-1"]);
    let status = bind(&mut client, "dev-1", &theirs.num_id.to_string())
        .await
        .expect_err("another registry's device");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn metadata_limits_are_invalid_argument() {
    let (_server, mut client) = with_registry().await;
    let long_key = format!("k{}", "x".repeat(127));
    let mut ok = device("dev-ok");
    ok.metadata.insert(long_key.clone(), "v".repeat(32 * 1024));
    let created = create_device(&mut client, "reg", ok).await;
    assert_eq!(created.metadata[&long_key].len(), 32 * 1024);

    let cases = [
        (format!("{long_key}x"), "v".to_owned()),
        ("1starts-with-digit".to_owned(), "v".to_owned()),
        ("has space".to_owned(), "v".to_owned()),
        ("k".to_owned(), "v".repeat(32 * 1024 + 1)),
    ];
    for (i, (key, value)) in cases.into_iter().enumerate() {
        let mut bad = device(&format!("dev-{i}"));
        bad.metadata.insert(key.clone(), value);
        expect_code(
            client
                .create_device(pb::CreateDeviceRequest {
                    parent: registry_name("reg"),
                    device: Some(bad),
                })
                .await,
            Code::InvalidArgument,
        );
    }
}

#[tokio::test]
async fn a_registry_ca_added_later_applies_only_to_credentials_added_later() {
    let (_server, mut client) = with_registry().await;
    let mut bare = device("dev-1");
    bare.credentials = vec![credential(
        pb::PublicKeyFormat::Es256Pem,
        &es256_public_key_pem(),
    )];
    create_device(&mut client, "reg", bare).await;
    let ca = TestCa::new("late ca");
    let ca_credential = |pem: &str| pb::RegistryCredential {
        credential: Some(pb::registry_credential::Credential::PublicKeyCertificate(
            pb::PublicKeyCertificate {
                format: pb::PublicKeyCertificateFormat::X509CertificatePem as i32,
                certificate: pem.into(),
                x509_details: None,
            },
        )),
    };
    let update = |pem: &str| pb::UpdateDeviceRegistryRequest {
        device_registry: Some(pb::DeviceRegistry {
            name: registry_name("reg"),
            credentials: vec![ca_credential(pem)],
            ..Default::default()
        }),
        update_mask: mask(&["credentials"]),
    };
    expect_code(
        client
            .update_device_registry(update("not a certificate"))
            .await,
        Code::InvalidArgument,
    );
    let updated = client
        .update_device_registry(update(&ca.cert_pem))
        .await
        .expect("add a CA")
        .into_inner();
    assert_eq!(updated.credentials.len(), 1);

    assert_eq!(get_device(&mut client, "dev-1").await.credentials.len(), 1);
    let mut bare = device("dev-2");
    bare.credentials = vec![credential(
        pb::PublicKeyFormat::Es256Pem,
        &es256_public_key_pem(),
    )];
    expect_code(
        client
            .create_device(pb::CreateDeviceRequest {
                parent: registry_name("reg"),
                device: Some(bare),
            })
            .await,
        Code::InvalidArgument,
    );
    // A device without credentials is still allowed (e.g. behind an association-only gateway).
    create_device(&mut client, "reg", device("dev-3")).await;
}

// ----- listing devices -----

#[tokio::test]
async fn list_devices_pages_by_two_over_five_devices() {
    let (_server, mut client) = with_registry().await;
    for i in 1..=5 {
        let mut new = device(&format!("dev-{i}"));
        new.metadata.insert("k".into(), "v".into());
        create_device(&mut client, "reg", new).await;
    }
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_devices(pb::ListDevicesRequest {
                parent: registry_name("reg"),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        for d in &page.devices {
            assert!(d.num_id != 0 && !d.name.is_empty(), "{d:?}");
            assert!(d.config.is_none(), "no mask: reduced projection {d:?}");
            assert!(d.metadata.is_empty(), "no mask: reduced projection {d:?}");
            assert!(d.gateway_config.is_none(), "no mask: reduced projection");
        }
        pages.push(page.devices.into_iter().map(|d| d.id).collect::<Vec<_>>());
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(pages.len() < 10, "paging does not end");
    }
    assert_eq!(
        pages,
        [
            vec!["dev-1", "dev-2"],
            vec!["dev-3", "dev-4"],
            vec!["dev-5"]
        ]
    );
}

#[tokio::test]
async fn list_devices_pages_over_a_device_ids_filter() {
    let (_server, mut client) = with_registry().await;
    for i in 1..=4 {
        create_device(&mut client, "reg", device(&format!("dev-{i}"))).await;
    }
    let mut ids = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page = client
            .list_devices(pb::ListDevicesRequest {
                parent: registry_name("reg"),
                device_ids: vec!["dev-4".into(), "dev-2".into(), "dev-1".into()],
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.devices.len() <= 1);
        ids.extend(page.devices.into_iter().map(|d| d.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert!(token.is_empty(), "paging does not end");
    assert_eq!(ids, ["dev-1", "dev-2", "dev-4"]);
}

#[tokio::test]
async fn list_devices_with_a_field_mask_adds_those_fields() {
    let (_server, mut client) = with_registry().await;
    let mut new = device("dev-1");
    new.metadata.insert("k".into(), "v".into());
    create_device(&mut client, "reg", new).await;
    let response = client
        .list_devices(pb::ListDevicesRequest {
            parent: registry_name("reg"),
            field_mask: mask(&["config,gatewayConfig"]),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let d = &response.devices[0];
    assert_eq!(d.id, "dev-1", "id is always returned");
    assert_ne!(d.num_id, 0, "numId is always returned");
    assert_eq!(d.config.as_ref().map(|c| c.version), Some(1));
    assert!(d.gateway_config.is_some());
    assert!(d.metadata.is_empty(), "metadata is outside the mask");
}

#[tokio::test]
async fn list_devices_filters_by_device_ids_and_num_ids() {
    let (_server, mut client) = with_registry().await;
    let mut num_ids = Vec::new();
    for i in 1..=4 {
        num_ids.push(
            create_device(&mut client, "reg", device(&format!("dev-{i}")))
                .await
                .num_id,
        );
    }
    let ids = list_devices(
        &mut client,
        pb::ListDevicesRequest {
            device_ids: vec!["dev-3".into(), "dev-1".into(), "unknown".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids, ["dev-1", "dev-3"]);
    let ids = list_devices(
        &mut client,
        pb::ListDevicesRequest {
            device_num_ids: vec![num_ids[3], num_ids[1]],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids, ["dev-2", "dev-4"]);
}

#[tokio::test]
async fn list_devices_filters_by_gateway_type() {
    let (_server, mut client) = with_registry().await;
    create_device(&mut client, "reg", gateway("gw-1")).await;
    create_device(&mut client, "reg", device("dev-1")).await;
    let mut explicit = device("dev-2");
    explicit.gateway_config = Some(pb::GatewayConfig {
        gateway_type: pb::GatewayType::NonGateway as i32,
        ..Default::default()
    });
    create_device(&mut client, "reg", explicit).await;
    use pb::gateway_list_options::Filter;
    let gateways = list_devices(
        &mut client,
        gateway_filter(Filter::GatewayType(pb::GatewayType::Gateway as i32)),
    )
    .await;
    assert_eq!(gateways, ["gw-1"]);
    let others = list_devices(
        &mut client,
        gateway_filter(Filter::GatewayType(pb::GatewayType::NonGateway as i32)),
    )
    .await;
    assert_eq!(others, ["dev-1", "dev-2"]);
    let all = list_devices(
        &mut client,
        gateway_filter(Filter::GatewayType(pb::GatewayType::Unspecified as i32)),
    )
    .await;
    assert_eq!(all, ["dev-1", "dev-2", "gw-1"]);
}

#[tokio::test]
async fn list_devices_filters_by_gateway_associations() {
    let (_server, mut client) = with_registry().await;
    let gw = create_device(&mut client, "reg", gateway("gw-1")).await;
    create_device(&mut client, "reg", gateway("gw-2")).await;
    for id in ["dev-1", "dev-2", "dev-3"] {
        create_device(&mut client, "reg", device(id)).await;
    }
    bind(&mut client, "gw-1", "dev-1").await.expect("bind");
    bind(&mut client, "gw-1", "dev-2").await.expect("bind");
    bind(&mut client, "gw-2", "dev-2").await.expect("bind");
    use pb::gateway_list_options::Filter;
    for gateway_ref in ["gw-1".to_owned(), gw.num_id.to_string()] {
        let bound = list_devices(
            &mut client,
            gateway_filter(Filter::AssociationsGatewayId(gateway_ref)),
        )
        .await;
        assert_eq!(bound, ["dev-1", "dev-2"]);
    }
    let gateways = list_devices(
        &mut client,
        gateway_filter(Filter::AssociationsDeviceId("dev-2".into())),
    )
    .await;
    assert_eq!(gateways, ["gw-1", "gw-2"]);
    let none = list_devices(
        &mut client,
        gateway_filter(Filter::AssociationsDeviceId("dev-3".into())),
    )
    .await;
    assert!(none.is_empty(), "{none:?}");
    let intersected = list_devices(
        &mut client,
        pb::ListDevicesRequest {
            device_ids: vec!["dev-2".into(), "dev-3".into()],
            ..gateway_filter(Filter::AssociationsGatewayId("gw-1".into()))
        },
    )
    .await;
    assert_eq!(intersected, ["dev-2"]);
}

#[tokio::test]
async fn list_devices_with_a_bad_page_token_is_invalid_argument() {
    let (_server, mut client) = with_registry().await;
    for i in 1..=3 {
        create_device(&mut client, "reg", device(&format!("dev-{i}"))).await;
    }
    let first = client
        .list_devices(pb::ListDevicesRequest {
            parent: registry_name("reg"),
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    for (token, device_ids) in [
        ("not a token".to_owned(), vec![]),
        // A token from another query.
        (first.next_page_token, vec!["dev-2".to_owned()]),
    ] {
        expect_code(
            client
                .list_devices(pb::ListDevicesRequest {
                    parent: registry_name("reg"),
                    page_size: 1,
                    page_token: token,
                    device_ids,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
    }
}

#[tokio::test]
async fn a_negative_page_size_is_invalid_argument() {
    let (_server, mut client) = with_registry().await;
    expect_code(
        client
            .list_devices(pb::ListDevicesRequest {
                parent: registry_name("reg"),
                page_size: -1,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn listing_devices_of_an_unknown_registry_is_not_found() {
    let server = TestServer::start(false);
    let mut client = server.grpc_client().await;
    expect_code(
        client
            .list_devices(pb::ListDevicesRequest {
                parent: registry_name("nope"),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
}

// ----- configs and states -----

#[tokio::test]
async fn modify_config_checks_version_to_update() {
    let (_server, mut client) = with_registry().await;
    for id in ["unconditional", "matching", "mismatching"] {
        create_device(&mut client, "reg", device(id)).await;
    }
    let config = modify_config(&mut client, "unconditional", 0, b"a")
        .await
        .expect("version 0 is unconditional")
        .into_inner();
    assert_eq!(config.version, 2);
    assert_eq!(config.binary_data, b"a");
    assert!(config.cloud_update_time.is_some());

    let config = modify_config(&mut client, "matching", 1, b"b")
        .await
        .expect("matching version")
        .into_inner();
    assert_eq!(config.version, 2);

    let message = expect_code(
        modify_config(&mut client, "mismatching", 5, b"c").await,
        Code::FailedPrecondition,
    );
    assert!(message.contains('5'), "{message}");
    assert_eq!(config_versions(&mut client, "mismatching", 0).await, [1]);

    let got = get_device(&mut client, "matching").await;
    assert_eq!(
        got.config.map(|c| (c.version, c.binary_data)),
        Some((2, b"b".to_vec()))
    );
}

#[tokio::test]
async fn a_second_config_update_within_a_second_is_resource_exhausted() {
    let (_server, mut client) = with_registry().await;
    create_device(&mut client, "reg", device("dev-1")).await;
    modify_config(&mut client, "dev-1", 0, b"first")
        .await
        .expect("first update");
    expect_code(
        modify_config(&mut client, "dev-1", 0, b"second").await,
        Code::ResourceExhausted,
    );
    assert_eq!(config_versions(&mut client, "dev-1", 0).await, [2, 1]);
}

#[tokio::test]
async fn config_data_of_64_kib_is_accepted_and_one_byte_more_is_invalid_argument() {
    let (_server, mut client) = with_registry().await;
    create_device(&mut client, "reg", device("fits")).await;
    create_device(&mut client, "reg", device("too-big")).await;
    let data = vec![7u8; 64 * 1024];
    let config = modify_config(&mut client, "fits", 0, &data)
        .await
        .expect("64 KiB fits")
        .into_inner();
    assert_eq!(config.binary_data.len(), 64 * 1024);
    let data = vec![7u8; 64 * 1024 + 1];
    expect_code(
        modify_config(&mut client, "too-big", 0, &data).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn config_versions_are_newest_first_and_trimmed_to_ten() {
    let (_server, mut client) = with_registry().await;
    create_device(&mut client, "reg", device("dev-1")).await;
    // Twelve updates, each as soon as the one-per-second throttle lets it through.
    let deadline = Instant::now() + Duration::from_secs(40);
    for n in 2..=13i64 {
        loop {
            match modify_config(&mut client, "dev-1", n - 1, n.to_string().as_bytes()).await {
                Ok(response) => {
                    assert_eq!(response.into_inner().version, n);
                    break;
                }
                Err(s) if s.code() == Code::ResourceExhausted => {
                    assert!(Instant::now() < deadline, "the throttle never lets go");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => panic!("update {n}: {s:?}"),
            }
        }
    }
    let configs = client
        .list_device_config_versions(pb::ListDeviceConfigVersionsRequest {
            name: device_name("reg", "dev-1"),
            num_versions: 0,
        })
        .await
        .expect("list")
        .into_inner()
        .device_configs;
    let versions: Vec<i64> = configs.iter().map(|c| c.version).collect();
    assert_eq!(versions, (4..=13).rev().collect::<Vec<_>>());
    for c in &configs {
        assert_eq!(c.binary_data, c.version.to_string().as_bytes());
    }
    assert_eq!(config_versions(&mut client, "dev-1", 3).await, [13, 12, 11]);
}

#[tokio::test]
async fn list_states_of_a_fresh_device_is_empty() {
    let (_server, mut client) = with_registry().await;
    create_device(&mut client, "reg", device("dev-1")).await;
    let states = client
        .list_device_states(pb::ListDeviceStatesRequest {
            name: device_name("reg", "dev-1"),
            num_states: 0,
        })
        .await
        .expect("list states")
        .into_inner();
    assert!(states.device_states.is_empty());
    expect_code(
        client
            .list_device_states(pb::ListDeviceStatesRequest {
                name: device_name("reg", "nope"),
                num_states: 0,
            })
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn send_command_is_failed_precondition_while_no_device_is_connected() {
    let (_server, mut client) = with_registry().await;
    create_device(&mut client, "reg", device("dev-1")).await;
    let send = |device: &str| pb::SendCommandToDeviceRequest {
        name: device_name("reg", device),
        binary_data: b"reboot".to_vec(),
        subfolder: "ops".into(),
    };
    expect_code(
        client.send_command_to_device(send("dev-1")).await,
        Code::FailedPrecondition,
    );
    expect_code(
        client.send_command_to_device(send("nope")).await,
        Code::NotFound,
    );
}

// ----- gateways -----

#[tokio::test]
async fn bind_and_unbind_a_device_by_id_or_num_id() {
    let (_server, mut client) = with_registry().await;
    let gw = create_device(&mut client, "reg", gateway("gw-1")).await;
    let dev = create_device(&mut client, "reg", device("dev-1")).await;
    bind(&mut client, "gw-1", "dev-1")
        .await
        .expect("bind by id");
    bind(&mut client, &gw.num_id.to_string(), &dev.num_id.to_string())
        .await
        .expect("binding again (by numId) is OK");
    unbind(&mut client, &gw.num_id.to_string(), "dev-1")
        .await
        .expect("unbind");
    let message = expect_code(
        client
            .unbind_device_from_gateway(pb::UnbindDeviceFromGatewayRequest {
                parent: registry_name("reg"),
                gateway_id: "gw-1".into(),
                device_id: "dev-1".into(),
            })
            .await,
        Code::NotFound,
    );
    assert!(!message.is_empty());
}

#[tokio::test]
async fn binding_to_a_non_gateway_or_a_gateway_to_a_gateway_is_invalid_argument() {
    let (_server, mut client) = with_registry().await;
    create_device(&mut client, "reg", gateway("gw-1")).await;
    create_device(&mut client, "reg", gateway("gw-2")).await;
    create_device(&mut client, "reg", device("dev-1")).await;
    create_device(&mut client, "reg", device("dev-2")).await;
    for (gw, dev) in [("dev-2", "dev-1"), ("gw-1", "gw-2")] {
        let status = bind(&mut client, gw, dev).await.expect_err("refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{gw} ← {dev}: {status:?}"
        );
    }
    let status = bind(&mut client, "gw-1", "nope")
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn deleting_a_gateway_with_a_bound_device_is_failed_precondition() {
    let (_server, mut client) = with_registry().await;
    create_device(&mut client, "reg", gateway("gw-1")).await;
    create_device(&mut client, "reg", device("dev-1")).await;
    create_device(&mut client, "reg", device("dev-2")).await;
    bind(&mut client, "gw-1", "dev-1").await.expect("bind");
    bind(&mut client, "gw-1", "dev-2").await.expect("bind");
    let delete_gateway = pb::DeleteDeviceRequest {
        name: device_name("reg", "gw-1"),
    };
    expect_code(
        client.delete_device(delete_gateway.clone()).await,
        Code::FailedPrecondition,
    );
    unbind(&mut client, "gw-1", "dev-1").await.expect("unbind");
    // Deleting a bound device drops its binding too.
    client
        .delete_device(pb::DeleteDeviceRequest {
            name: device_name("reg", "dev-2"),
        })
        .await
        .expect("delete a bound device");
    client
        .delete_device(delete_gateway)
        .await
        .expect("a gateway without devices can be deleted");
}

// ----- IAM -----

#[tokio::test]
async fn iam_get_set_and_test_on_a_registry_and_a_group() {
    let (_server, mut client) = with_registry().await;
    for resource in [
        registry_name("reg"),
        format!("{}/groups/g1", registry_name("reg")),
    ] {
        let policy = client
            .get_iam_policy(iam::GetIamPolicyRequest {
                resource: resource.clone(),
                options: None,
            })
            .await
            .expect("get policy")
            .into_inner();
        assert_eq!(policy.version, 1);
        assert_eq!(policy.etag, b"perch");

        let wanted = iam::Policy {
            version: 1,
            bindings: vec![iam::Binding {
                role: "roles/cloudiot.viewer".into(),
                members: vec!["user:ada@example.com".into()],
                condition: None,
            }],
            audit_configs: vec![],
            etag: b"perch".to_vec(),
        };
        let set = client
            .set_iam_policy(iam::SetIamPolicyRequest {
                resource: resource.clone(),
                policy: Some(wanted.clone()),
                update_mask: None,
            })
            .await
            .expect("set policy")
            .into_inner();
        assert_eq!(set, wanted);

        let permissions = vec![
            "cloudiot.devices.get".to_owned(),
            "cloudiot.devices.update".to_owned(),
        ];
        let granted = client
            .test_iam_permissions(iam::TestIamPermissionsRequest {
                resource,
                permissions: permissions.clone(),
            })
            .await
            .expect("test permissions")
            .into_inner();
        assert_eq!(granted.permissions, permissions);
    }
    expect_code(
        client
            .get_iam_policy(iam::GetIamPolicyRequest {
                resource: registry_name("nope"),
                options: None,
            })
            .await,
        Code::NotFound,
    );
}

// ----- registry CA -----

#[tokio::test]
async fn a_registry_ca_admits_only_device_certificates_it_signed() {
    let server = TestServer::start(false);
    let mut client = server.grpc_client().await;
    let ca = TestCa::new("registry ca");
    let other = TestCa::new("other ca");
    let registry = client
        .create_device_registry(pb::CreateDeviceRegistryRequest {
            parent: LOCATION.into(),
            device_registry: Some(pb::DeviceRegistry {
                id: "reg".into(),
                credentials: vec![pb::RegistryCredential {
                    credential: Some(pb::registry_credential::Credential::PublicKeyCertificate(
                        pb::PublicKeyCertificate {
                            format: pb::PublicKeyCertificateFormat::X509CertificatePem as i32,
                            certificate: ca.cert_pem.clone(),
                            x509_details: None,
                        },
                    )),
                }],
                ..Default::default()
            }),
        })
        .await
        .expect("create a registry with a CA")
        .into_inner();
    let Some(pb::registry_credential::Credential::PublicKeyCertificate(cert)) =
        &registry.credentials[0].credential
    else {
        panic!("no certificate: {registry:?}");
    };
    let details = cert.x509_details.as_ref().expect("x509 details");
    assert!(details.subject.contains("registry ca"), "{details:?}");
    assert_eq!(details.public_key_type, "EC");

    let refused = [
        credential(pb::PublicKeyFormat::Es256X509Pem, &other.sign_device_cert()),
        credential(pb::PublicKeyFormat::Es256X509Pem, &self_signed_es256_cert()),
        credential(pb::PublicKeyFormat::Es256Pem, &es256_public_key_pem()),
        credential(pb::PublicKeyFormat::Es256X509Pem, &ca.cert_pem),
    ];
    for (i, cred) in refused.into_iter().enumerate() {
        let mut new = device(&format!("refused-{i}"));
        new.credentials = vec![cred];
        expect_code(
            client
                .create_device(pb::CreateDeviceRequest {
                    parent: registry_name("reg"),
                    device: Some(new),
                })
                .await,
            Code::InvalidArgument,
        );
    }

    let mut signed = device("dev-1");
    signed.credentials = vec![credential(
        pb::PublicKeyFormat::Es256X509Pem,
        &ca.sign_device_cert(),
    )];
    create_device(&mut client, "reg", signed).await;

    // The check also runs when credentials are patched in.
    let mut patch = device("dev-1");
    patch.name = device_name("reg", "dev-1");
    patch.credentials = vec![credential(
        pb::PublicKeyFormat::Es256X509Pem,
        &other.sign_device_cert(),
    )];
    expect_code(
        client
            .update_device(pb::UpdateDeviceRequest {
                device: Some(patch.clone()),
                update_mask: mask(&["credentials"]),
            })
            .await,
        Code::InvalidArgument,
    );
    patch.credentials = vec![
        credential(pb::PublicKeyFormat::Es256X509Pem, &ca.sign_device_cert()),
        credential(pb::PublicKeyFormat::Es256X509Pem, &ca.sign_device_cert()),
    ];
    let updated = client
        .update_device(pb::UpdateDeviceRequest {
            device: Some(patch),
            update_mask: mask(&["credentials"]),
        })
        .await
        .expect("signed certificates are accepted")
        .into_inner();
    assert_eq!(updated.credentials.len(), 2);
}

// ----- auth -----

#[tokio::test]
async fn grpc_without_or_with_a_wrong_token_is_unauthenticated() {
    let server = TestServer::start(false);
    for token in [None, Some("wrong")] {
        let mut client = server.grpc_client_with_token(token).await;
        let message = expect_code(
            client
                .list_device_registries(pb::ListDeviceRegistriesRequest {
                    parent: LOCATION.into(),
                    ..Default::default()
                })
                .await,
            Code::Unauthenticated,
        );
        assert!(message.contains("token"), "{message}");
    }
    let mut client = server.grpc_client().await;
    client
        .list_device_registries(pb::ListDeviceRegistriesRequest {
            parent: LOCATION.into(),
            ..Default::default()
        })
        .await
        .expect("the right token is accepted");
}

#[tokio::test]
async fn a_dev_server_accepts_grpc_without_a_token() {
    let server = TestServer::start(true);
    assert!(server.token.is_none());
    assert!(
        !server.data_dir().join("admin-token").exists(),
        "--dev makes no admin token"
    );
    let mut client = server.grpc_client_with_token(None).await;
    create_registry(&mut client, "reg").await;
}
