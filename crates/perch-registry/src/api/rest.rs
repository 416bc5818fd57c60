//! cloudiot v1 over REST: Google's gRPC transcoding of `DeviceManager` (SPEC.md §2), served by
//! the same handlers as gRPC so both surfaces answer alike.
//!
//! Paths are parsed by hand (`request`) rather than by the router because Google's custom verbs
//! (`…/devices/{id}:modifyCloudToDeviceConfig`) share a segment with a name, and `groups/{g}`
//! segments are transparent. Bodies and responses use the pbjson proto3 JSON mapping: camelCase
//! and snake_case in, int64 as strings and enums by name or number.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use perch_proto::google::iam::v1 as iam;
use perch_proto::iot as pb;
use perch_proto::iot::device_manager_server::DeviceManager;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;

use self::request::{Call, Op, Query, route, split_path};
use super::grpc::{DeviceManagerApi, MAX_REQUEST_BYTES};

mod request;

/// The discovery document google-api-python-client ships for cloudiot v1 (see `discovery/`).
const DISCOVERY_DOCUMENT: &str = include_str!("../../discovery/cloudiot.v1.json");

/// Routes of the cloudiot v1 REST surface, to be mounted on the admin listener (behind the
/// admin-token layer), and the discovery document routes (public, as Google's are).
pub fn router(api: DeviceManagerApi) -> Router {
    Router::new()
        .route("/v1/projects/{project}/locations/{*rest}", any(dispatch))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(api)
}

/// `GET /$discovery/rest?version=v1` and `/discovery/v1/apis/cloudiot/v1/rest`, with `rootUrl`
/// rewritten to the address the client used.
pub fn discovery_router() -> Router {
    Router::new()
        .route("/$discovery/rest", get(discovery))
        .route("/discovery/v1/apis/cloudiot/v1/rest", get(discovery))
}

async fn discovery(request: Request) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let root = format!("http://{host}/");
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(DISCOVERY_DOCUMENT) else {
        return status_response(&Status::internal(
            "the embedded discovery document is malformed",
        ));
    };
    doc["rootUrl"] = root.clone().into();
    doc["baseUrl"] = root.clone().into();
    doc["mtlsRootUrl"] = root.into();
    axum::Json(doc).into_response()
}

/// Renders a status as Google's REST error body: `{"error":{"code","message","status"}}`.
pub use perch_api::status_response;

fn json_response<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut response = bytes.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            response
        }
        Err(e) => status_response(&Status::internal(format!("response encoding failed: {e}"))),
    }
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// Parses a JSON body into a proto message; an empty body is `{}`.
fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "the request body is not valid JSON for this method: {e}"
        ))
    })
}

async fn dispatch(State(api): State<DeviceManagerApi>, request: Request) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let body = match axum::body::to_bytes(request.into_body(), MAX_REQUEST_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            // The rest of the body is unread: the connection cannot carry another request.
            let mut response = status_response(&invalid(format!(
                "the request body is larger than {MAX_REQUEST_BYTES} bytes"
            )));
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    let path = uri.path().trim_start_matches("/v1/");
    match handle(&api, &method, path, uri.query(), &body).await {
        Ok(response) => response,
        Err(status) => status_response(&status),
    }
}

/// The registry a registry- or group-level name belongs to (`…/registries/r/groups/g` → `…/registries/r`).
fn registry_of(name: &str) -> String {
    name.split("/groups/").next().unwrap_or(name).to_owned()
}

fn req<T>(message: T) -> tonic::Request<T> {
    tonic::Request::new(message)
}

async fn handle(
    api: &DeviceManagerApi,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &Bytes,
) -> Result<Response, Status> {
    let (path, verb) = split_path(path)?;
    if let Some(response) = super::provisioning_rest::handle(
        api.provisioning(),
        method,
        &path,
        verb.as_deref(),
        query,
        body,
    )
    .await
    {
        return response;
    }
    let Some((call, name)) = route(method, &path, verb) else {
        return Err(Status::not_found(format!(
            "no cloudiot v1 method serves {method} /v1/{path}"
        )));
    };
    let q = Query::parse(query);
    match call {
        Call::Registries(op) => registries(api, op, name, &q, body).await,
        Call::Devices(op) => devices(api, op, name, &q, body).await,
        Call::ConfigVersions => Ok(json_response(
            api.list_device_config_versions(req(pb::ListDeviceConfigVersionsRequest {
                name,
                num_versions: q.int("num_versions")?.unwrap_or(0),
            }))
            .await?
            .get_ref(),
        )),
        Call::States => Ok(json_response(
            api.list_device_states(req(pb::ListDeviceStatesRequest {
                name,
                num_states: q.int("num_states")?.unwrap_or(0),
            }))
            .await?
            .get_ref(),
        )),
        Call::DeviceVerb(verb) => device_verb(api, &verb, name, body).await,
        Call::RegistryVerb(verb) | Call::GroupVerb(verb) => {
            registry_verb(api, &verb, name, body).await
        }
    }
}

/// `…/registries` and `…/registries/{r}`.
async fn registries(
    api: &DeviceManagerApi,
    op: Op,
    name: String,
    q: &Query,
    body: &Bytes,
) -> Result<Response, Status> {
    let response = match op {
        Op::List => json_response(
            api.list_device_registries(req(pb::ListDeviceRegistriesRequest {
                parent: name,
                page_size: q.int("page_size")?.unwrap_or(0),
                page_token: q.first("page_token").unwrap_or_default().to_owned(),
            }))
            .await?
            .get_ref(),
        ),
        Op::Create => json_response(
            api.create_device_registry(req(pb::CreateDeviceRegistryRequest {
                parent: name,
                device_registry: Some(parse_body(body)?),
            }))
            .await?
            .get_ref(),
        ),
        Op::Get => json_response(
            api.get_device_registry(req(pb::GetDeviceRegistryRequest { name }))
                .await?
                .get_ref(),
        ),
        Op::Patch => {
            let mut registry: pb::DeviceRegistry = parse_body(body)?;
            registry.name = name;
            json_response(
                api.update_device_registry(req(pb::UpdateDeviceRegistryRequest {
                    device_registry: Some(registry),
                    update_mask: q.mask("update_mask"),
                }))
                .await?
                .get_ref(),
            )
        }
        Op::Delete => json_response(
            api.delete_device_registry(req(pb::DeleteDeviceRegistryRequest { name }))
                .await?
                .get_ref(),
        ),
    };
    Ok(response)
}

/// `…/devices` and `…/devices/{d}`.
async fn devices(
    api: &DeviceManagerApi,
    op: Op,
    name: String,
    q: &Query,
    body: &Bytes,
) -> Result<Response, Status> {
    let response = match op {
        Op::List => json_response(
            api.list_devices(req(list_devices_request(name, q)?))
                .await?
                .get_ref(),
        ),
        Op::Create => json_response(
            api.create_device(req(pb::CreateDeviceRequest {
                parent: name,
                device: Some(parse_body(body)?),
            }))
            .await?
            .get_ref(),
        ),
        Op::Get => json_response(
            api.get_device(req(pb::GetDeviceRequest {
                name,
                field_mask: q.mask("field_mask"),
            }))
            .await?
            .get_ref(),
        ),
        Op::Patch => {
            let mut device: pb::Device = parse_body(body)?;
            device.name = name;
            json_response(
                api.update_device(req(pb::UpdateDeviceRequest {
                    device: Some(device),
                    update_mask: q.mask("update_mask"),
                }))
                .await?
                .get_ref(),
            )
        }
        Op::Delete => json_response(
            api.delete_device(req(pb::DeleteDeviceRequest { name }))
                .await?
                .get_ref(),
        ),
    };
    Ok(response)
}

/// A `ListDevices` request from the query: ids, numeric ids, field mask, paging, and at most
/// one gateway filter (type, then associations by gateway, then by device).
fn list_devices_request(parent: String, q: &Query) -> Result<pb::ListDevicesRequest, Status> {
    let gateway_type = q.first("gateway_list_options.gateway_type");
    let filter = if let Some(t) = gateway_type {
        let n = t
            .parse::<i32>()
            .ok()
            .or_else(|| pb::GatewayType::from_str_name(t).map(|g| g as i32))
            .ok_or_else(|| {
                invalid(format!(
                    "'gatewayListOptions.gatewayType' has no value '{t}'"
                ))
            })?;
        Some(pb::gateway_list_options::Filter::GatewayType(n))
    } else if let Some(id) = q.first("gateway_list_options.associations_gateway_id") {
        Some(pb::gateway_list_options::Filter::AssociationsGatewayId(
            id.to_owned(),
        ))
    } else {
        q.first("gateway_list_options.associations_device_id")
            .map(|id| pb::gateway_list_options::Filter::AssociationsDeviceId(id.to_owned()))
    };
    let device_num_ids = q
        .all("device_num_ids")
        .iter()
        .map(|v| {
            v.parse()
                .map_err(|_| invalid(format!("deviceNumIds must be numbers, got '{v}'")))
        })
        .collect::<Result<_, _>>()?;
    Ok(pb::ListDevicesRequest {
        parent,
        device_num_ids,
        device_ids: q.all("device_ids"),
        field_mask: q.mask("field_mask"),
        gateway_list_options: filter.map(|f| pb::GatewayListOptions { filter: Some(f) }),
        page_size: q.int("page_size")?.unwrap_or(0),
        page_token: q.first("page_token").unwrap_or_default().to_owned(),
    })
}

/// `…/devices/{d}:verb`.
async fn device_verb(
    api: &DeviceManagerApi,
    verb: &str,
    name: String,
    body: &Bytes,
) -> Result<Response, Status> {
    match verb {
        "modifyCloudToDeviceConfig" => {
            let named = |r: &mut pb::ModifyCloudToDeviceConfigRequest| r.name = name;
            call(body, named, |r| api.modify_cloud_to_device_config(r)).await
        }
        "sendCommandToDevice" => {
            let named = |r: &mut pb::SendCommandToDeviceRequest| r.name = name;
            call(body, named, |r| api.send_command_to_device(r)).await
        }
        _ => Err(Status::not_found(format!(
            "devices have no method ':{verb}'"
        ))),
    }
}

/// `…/registries/{r}:verb` and `…/registries/{r}/groups/{g}:verb` (gateway bindings and IAM).
async fn registry_verb(
    api: &DeviceManagerApi,
    verb: &str,
    name: String,
    body: &Bytes,
) -> Result<Response, Status> {
    match verb {
        "bindDeviceToGateway" => {
            let named = |r: &mut pb::BindDeviceToGatewayRequest| r.parent = registry_of(&name);
            call(body, named, |r| api.bind_device_to_gateway(r)).await
        }
        "unbindDeviceFromGateway" => {
            let named = |r: &mut pb::UnbindDeviceFromGatewayRequest| r.parent = registry_of(&name);
            call(body, named, |r| api.unbind_device_from_gateway(r)).await
        }
        "setIamPolicy" => {
            let named = |r: &mut iam::SetIamPolicyRequest| r.resource = name;
            call(body, named, |r| api.set_iam_policy(r)).await
        }
        "getIamPolicy" => {
            let named = |r: &mut iam::GetIamPolicyRequest| r.resource = name;
            call(body, named, |r| api.get_iam_policy(r)).await
        }
        "testIamPermissions" => {
            let named = |r: &mut iam::TestIamPermissionsRequest| r.resource = name;
            call(body, named, |r| api.test_iam_permissions(r)).await
        }
        _ => Err(Status::not_found(format!(
            "registries have no method ':{verb}'"
        ))),
    }
}

/// Runs a custom verb whose request is the body: parsed, given the resource it names
/// (`named`), passed to `method`, and its answer rendered as JSON.
async fn call<T, R, F>(
    body: &Bytes,
    named: impl FnOnce(&mut T),
    method: impl FnOnce(tonic::Request<T>) -> F,
) -> Result<Response, Status>
where
    T: DeserializeOwned + Default,
    R: Serialize,
    F: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
{
    let mut r: T = parse_body(body)?;
    named(&mut r);
    Ok(json_response(method(req(r)).await?.get_ref()))
}
