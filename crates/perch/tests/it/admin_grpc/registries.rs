//! Registries.

use super::*;

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
