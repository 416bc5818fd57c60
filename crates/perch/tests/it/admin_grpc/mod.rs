//! Every DeviceManager gRPC method against an in-process server: happy paths and errors
//! (SPEC.md §2).

mod auth;
mod configs_and_states;
mod devices;
mod gateways;
mod iam_policy;
mod listing_devices;
mod registries;
mod registry_ca;

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
