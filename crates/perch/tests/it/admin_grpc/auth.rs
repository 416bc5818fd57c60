//! Auth.

use super::*;

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
