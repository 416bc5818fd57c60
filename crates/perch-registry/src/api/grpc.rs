//! `google.cloud.iot.v1.DeviceManager` over gRPC. Each method parses names once, calls the
//! service, and converts the result; REST calls these same methods.

use perch_core::{DeviceName, LocationName, RegistryName};
use perch_proto::google::iam::v1 as iam;
use perch_proto::iot as pb;
use perch_proto::iot::device_manager_server::DeviceManager;
use tonic::{Request, Response, Status};

use super::convert;
use super::{invalid, to_status};
use crate::mask::parse_paths;
use crate::{DeviceListQuery, GatewayListOption, RegistryService};

/// The DeviceManager gRPC service over a `RegistryService`.
#[derive(Debug, Clone)]
pub struct DeviceManagerApi {
    service: RegistryService,
    provisioning: crate::provisioning::ProvisioningService,
}

impl DeviceManagerApi {
    pub fn new(service: RegistryService) -> DeviceManagerApi {
        let provisioning = crate::provisioning::ProvisioningService::new(service.clone());
        DeviceManagerApi {
            service,
            provisioning,
        }
    }

    /// Fleet provisioning (served on REST only; Perch's own API, not Google's).
    pub fn provisioning(&self) -> &crate::provisioning::ProvisioningService {
        &self.provisioning
    }

    /// The tonic server to add to a router.
    pub fn into_server(self) -> pb::device_manager_server::DeviceManagerServer<DeviceManagerApi> {
        pb::device_manager_server::DeviceManagerServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

/// Largest admin request: a device with 3 credentials, 256 KB of metadata and a 64 KB config fits.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

fn location(field: &'static str, s: &str) -> Result<LocationName, Status> {
    LocationName::parse(field, s).map_err(|e| invalid(e.to_string()))
}

fn registry(field: &'static str, s: &str) -> Result<RegistryName, Status> {
    RegistryName::parse(field, s).map_err(|e| invalid(e.to_string()))
}

fn device(field: &'static str, s: &str) -> Result<DeviceName, Status> {
    DeviceName::parse(field, s).map_err(|e| invalid(e.to_string()))
}

fn mask_paths(mask: Option<pbjson_types::FieldMask>) -> Vec<String> {
    parse_paths(mask.iter().flat_map(|m| m.paths.iter().map(String::as_str)))
}

fn page_size(n: i32) -> Result<usize, Status> {
    usize::try_from(n).map_err(|_| invalid(format!("pageSize must not be negative, got {n}")))
}

/// IAM is single-admin in Perch: the policy is fixed and every permission is held (documented
/// in docs/iot-admin.md).
fn fixed_policy() -> iam::Policy {
    iam::Policy {
        version: 1,
        bindings: vec![],
        audit_configs: vec![],
        etag: b"perch".to_vec(),
    }
}

#[tonic::async_trait]
impl DeviceManager for DeviceManagerApi {
    async fn create_device_registry(
        &self,
        request: Request<pb::CreateDeviceRegistryRequest>,
    ) -> Result<Response<pb::DeviceRegistry>, Status> {
        let req = request.into_inner();
        let parent = location("parent", &req.parent)?;
        let body = req
            .device_registry
            .ok_or_else(|| invalid("'device_registry' is required"))?;
        let registry = convert::new_registry_from_proto(&body).map_err(|r| to_status(r.into()))?;
        let created = self
            .service
            .create_registry(&parent, registry)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::registry_to_proto(&created)))
    }

    async fn get_device_registry(
        &self,
        request: Request<pb::GetDeviceRegistryRequest>,
    ) -> Result<Response<pb::DeviceRegistry>, Status> {
        let name = registry("name", &request.into_inner().name)?;
        let r = self.service.get_registry(&name).await.map_err(to_status)?;
        Ok(Response::new(convert::registry_to_proto(&r)))
    }

    async fn update_device_registry(
        &self,
        request: Request<pb::UpdateDeviceRegistryRequest>,
    ) -> Result<Response<pb::DeviceRegistry>, Status> {
        let req = request.into_inner();
        let body = req
            .device_registry
            .ok_or_else(|| invalid("'device_registry' is required"))?;
        let name = registry("device_registry.name", &body.name)?;
        let patch = convert::registry_patch(&body).map_err(|r| to_status(r.into()))?;
        let mask = mask_paths(req.update_mask);
        let r = self
            .service
            .update_registry(&name, patch, &mask)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::registry_to_proto(&r)))
    }

    async fn delete_device_registry(
        &self,
        request: Request<pb::DeleteDeviceRegistryRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let name = registry("name", &request.into_inner().name)?;
        self.service
            .delete_registry(&name)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn list_device_registries(
        &self,
        request: Request<pb::ListDeviceRegistriesRequest>,
    ) -> Result<Response<pb::ListDeviceRegistriesResponse>, Status> {
        let req = request.into_inner();
        let parent = location("parent", &req.parent)?;
        let (registries, next) = self
            .service
            .list_registries(&parent, page_size(req.page_size)?, &req.page_token)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListDeviceRegistriesResponse {
            device_registries: registries.iter().map(convert::registry_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn create_device(
        &self,
        request: Request<pb::CreateDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let req = request.into_inner();
        let parent = registry("parent", &req.parent)?;
        let body = req.device.ok_or_else(|| invalid("'device' is required"))?;
        let device = convert::new_device_from_proto(&body).map_err(|r| to_status(r.into()))?;
        let created = self
            .service
            .create_device(&parent, device)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::device_to_proto(&parent, &created)))
    }

    async fn get_device(
        &self,
        request: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let req = request.into_inner();
        let name = device("name", &req.name)?;
        let mask = mask_paths(req.field_mask);
        convert::check_device_read_mask(&mask).map_err(|r| to_status(r.into()))?;
        let d = self.service.get_device(&name).await.map_err(to_status)?;
        let mut out = convert::device_to_proto(&name.registry, &d);
        if !mask.is_empty() {
            convert::apply_device_read_mask(&mut out, &mask, &[]);
        }
        Ok(Response::new(out))
    }

    async fn update_device(
        &self,
        request: Request<pb::UpdateDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let req = request.into_inner();
        let body = req.device.ok_or_else(|| invalid("'device' is required"))?;
        let name = device("device.name", &body.name)?;
        let mask = mask_paths(req.update_mask);
        let patch = convert::device_patch(&body, &mask).map_err(|r| to_status(r.into()))?;
        let d = self
            .service
            .update_device(&name, patch, &mask)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::device_to_proto(&name.registry, &d)))
    }

    async fn delete_device(
        &self,
        request: Request<pb::DeleteDeviceRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let name = device("name", &request.into_inner().name)?;
        self.service.delete_device(&name).await.map_err(to_status)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let req = request.into_inner();
        let parent = registry("parent", &req.parent)?;
        let mask = mask_paths(req.field_mask);
        convert::check_device_read_mask(&mask).map_err(|r| to_status(r.into()))?;
        let gateway = match req.gateway_list_options.and_then(|o| o.filter) {
            None => GatewayListOption::None,
            Some(pb::gateway_list_options::Filter::GatewayType(t)) => {
                GatewayListOption::GatewayType(
                    perch_core::model::GatewayType::from_i32(t).ok_or_else(|| {
                        invalid(format!("'gatewayListOptions.gatewayType' has no value {t}"))
                    })?,
                )
            }
            Some(pb::gateway_list_options::Filter::AssociationsGatewayId(id)) => {
                GatewayListOption::AssociationsGatewayId(id)
            }
            Some(pb::gateway_list_options::Filter::AssociationsDeviceId(id)) => {
                GatewayListOption::AssociationsDeviceId(id)
            }
        };
        let query = DeviceListQuery {
            device_ids: req.device_ids,
            device_num_ids: req.device_num_ids,
            gateway,
            page_size: page_size(req.page_size)?,
            page_token: req.page_token,
        };
        let (devices, next) = self
            .service
            .list_devices(&parent, query)
            .await
            .map_err(to_status)?;
        let devices = devices
            .iter()
            .map(|d| {
                let mut out = convert::device_to_proto(&parent, d);
                // Without a mask IoT Core returned a reduced projection (SPEC.md §2.3).
                convert::apply_device_read_mask(&mut out, &mask, &["id", "name", "num_id"]);
                out
            })
            .collect();
        Ok(Response::new(pb::ListDevicesResponse {
            devices,
            next_page_token: next,
        }))
    }

    async fn modify_cloud_to_device_config(
        &self,
        request: Request<pb::ModifyCloudToDeviceConfigRequest>,
    ) -> Result<Response<pb::DeviceConfig>, Status> {
        let req = request.into_inner();
        let name = device("name", &req.name)?;
        let config = self
            .service
            .modify_config(&name, req.version_to_update, req.binary_data)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::config_proto(&config)))
    }

    async fn list_device_config_versions(
        &self,
        request: Request<pb::ListDeviceConfigVersionsRequest>,
    ) -> Result<Response<pb::ListDeviceConfigVersionsResponse>, Status> {
        let req = request.into_inner();
        let name = device("name", &req.name)?;
        let n = usize::try_from(req.num_versions)
            .map_err(|_| invalid("numVersions must not be negative"))?;
        let configs = self
            .service
            .list_config_versions(&name, n)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListDeviceConfigVersionsResponse {
            device_configs: convert::configs_to_proto(&configs),
        }))
    }

    async fn list_device_states(
        &self,
        request: Request<pb::ListDeviceStatesRequest>,
    ) -> Result<Response<pb::ListDeviceStatesResponse>, Status> {
        let req = request.into_inner();
        let name = device("name", &req.name)?;
        let n = usize::try_from(req.num_states)
            .map_err(|_| invalid("numStates must not be negative"))?;
        let states = self
            .service
            .list_states(&name, n)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListDeviceStatesResponse {
            device_states: states.iter().map(convert::state_to_proto).collect(),
        }))
    }

    async fn set_iam_policy(
        &self,
        request: Request<iam::SetIamPolicyRequest>,
    ) -> Result<Response<iam::Policy>, Status> {
        let req = request.into_inner();
        self.check_iam_resource(&req.resource).await?;
        Ok(Response::new(req.policy.unwrap_or_else(fixed_policy)))
    }

    async fn get_iam_policy(
        &self,
        request: Request<iam::GetIamPolicyRequest>,
    ) -> Result<Response<iam::Policy>, Status> {
        self.check_iam_resource(&request.into_inner().resource)
            .await?;
        Ok(Response::new(fixed_policy()))
    }

    async fn test_iam_permissions(
        &self,
        request: Request<iam::TestIamPermissionsRequest>,
    ) -> Result<Response<iam::TestIamPermissionsResponse>, Status> {
        let req = request.into_inner();
        self.check_iam_resource(&req.resource).await?;
        Ok(Response::new(iam::TestIamPermissionsResponse {
            permissions: req.permissions,
        }))
    }

    async fn send_command_to_device(
        &self,
        request: Request<pb::SendCommandToDeviceRequest>,
    ) -> Result<Response<pb::SendCommandToDeviceResponse>, Status> {
        let req = request.into_inner();
        let name = device("name", &req.name)?;
        self.service
            .send_command(&name, &req.binary_data, &req.subfolder)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::SendCommandToDeviceResponse {}))
    }

    async fn bind_device_to_gateway(
        &self,
        request: Request<pb::BindDeviceToGatewayRequest>,
    ) -> Result<Response<pb::BindDeviceToGatewayResponse>, Status> {
        let req = request.into_inner();
        let parent = registry("parent", &req.parent)?;
        self.service
            .bind_device_to_gateway(&parent, &req.gateway_id, &req.device_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::BindDeviceToGatewayResponse {}))
    }

    async fn unbind_device_from_gateway(
        &self,
        request: Request<pb::UnbindDeviceFromGatewayRequest>,
    ) -> Result<Response<pb::UnbindDeviceFromGatewayResponse>, Status> {
        let req = request.into_inner();
        let parent = registry("parent", &req.parent)?;
        self.service
            .unbind_device_from_gateway(&parent, &req.gateway_id, &req.device_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::UnbindDeviceFromGatewayResponse {}))
    }
}

impl DeviceManagerApi {
    /// IAM calls name a registry (or a group under it, treated as the registry); it must exist.
    async fn check_iam_resource(&self, resource: &str) -> Result<(), Status> {
        let registry_part = match resource.split_once("/groups/") {
            Some((registry, _)) => registry,
            None => resource,
        };
        let name = registry("resource", registry_part)?;
        self.service.get_registry(&name).await.map_err(to_status)?;
        Ok(())
    }
}
