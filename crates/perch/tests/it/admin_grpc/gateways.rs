//! Gateways.

use super::*;

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
