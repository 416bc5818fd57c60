//! Devices.

use super::*;

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
