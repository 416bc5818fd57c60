//! Listing devices.

use super::*;

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
