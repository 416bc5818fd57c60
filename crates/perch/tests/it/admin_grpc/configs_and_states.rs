//! Configs and states.

use super::*;

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
