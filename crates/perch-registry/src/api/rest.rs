//! cloudiot v1 over REST: Google's gRPC transcoding of `DeviceManager` (SPEC.md §2), served by
//! the same handlers as gRPC so both surfaces answer alike.
//!
//! Paths are parsed here rather than by the router because Google's custom verbs
//! (`…/devices/{id}:modifyCloudToDeviceConfig`) share a segment with a name, and `groups/{g}`
//! segments are transparent. Bodies and responses use the pbjson proto3 JSON mapping: camelCase
//! and snake_case in, int64 as strings and enums by name or number.

use std::collections::HashMap;

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

use super::grpc::{DeviceManagerApi, MAX_REQUEST_BYTES};
use crate::mask::to_snake_case;

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

/// Query parameters, keys normalised to snake_case; repeated keys keep every value.
#[derive(Debug, Default)]
struct Query(HashMap<String, Vec<String>>);

/// System parameters Google's front end accepts on every call; they change nothing here.
const SYSTEM_PARAMS: &[&str] = &[
    "$alt",
    "alt",
    "$.xgafv",
    "access_token",
    "callback",
    "fields",
    "key",
    "oauth_token",
    "pretty_print",
    "quota_user",
    "upload_type",
    "upload_protocol",
];

impl Query {
    fn parse(raw: Option<&str>) -> Query {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let key = to_snake_case(&k);
            if SYSTEM_PARAMS.contains(&key.as_str()) {
                continue;
            }
            map.entry(key).or_default().push(v.into_owned());
        }
        Query(map)
    }

    fn first(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.first()).map(String::as_str)
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.0.get(key).cloned().unwrap_or_default()
    }

    fn int<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, Status> {
        self.first(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    invalid(format!(
                        "query parameter '{key}' must be a number, got '{v}'"
                    ))
                })
            })
            .transpose()
    }

    fn mask(&self, key: &str) -> Option<pbjson_types::FieldMask> {
        let paths = self.all(key);
        (!paths.is_empty()).then_some(pbjson_types::FieldMask { paths })
    }
}

/// Percent-decodes the path and splits off a trailing `:verb`; `groups/{g}` segments that
/// precede `devices` or a verb are dropped (SPEC.md §1.1).
fn split_path(path: &str) -> Result<(String, Option<String>), Status> {
    let decoded: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
        })
        .collect::<Result<_, _>>()
        .map_err(|_| invalid("the request path is not valid UTF-8"))?;
    let mut segments: Vec<String> = Vec::with_capacity(decoded.len());
    let mut verb = None;
    let count = decoded.len();
    for (i, mut seg) in decoded.into_iter().enumerate() {
        if i + 1 == count
            && let Some((name, v)) = seg.rsplit_once(':')
        {
            verb = Some(v.to_owned());
            seg = name.to_owned();
        }
        segments.push(seg);
    }
    // Drop `groups/{g}` right after `registries/{r}` when devices follow (group device paths).
    if segments.len() > 7
        && segments[6] == "groups"
        && segments.get(8).is_some_and(|s| s == "devices")
    {
        segments.drain(6..8);
    }
    Ok((segments.join("/"), verb))
}

/// How a REST call maps onto a DeviceManager method.
enum Call {
    ListRegistries,
    CreateRegistry,
    GetRegistry,
    PatchRegistry,
    DeleteRegistry,
    ListDevices,
    CreateDevice,
    GetDevice,
    PatchDevice,
    DeleteDevice,
    ConfigVersions,
    States,
    RegistryVerb(String),
    DeviceVerb(String),
    GroupVerb(String),
}

fn route(method: &Method, path: &str, verb: Option<String>) -> Option<(Call, String)> {
    let parts: Vec<&str> = path.split('/').collect();
    // projects/P/locations/L = 4 segments; /registries/R = 6; /devices/D = 8; /groups/G = 8.
    let call = match (parts.len(), verb, method) {
        (5, None, &Method::GET) if parts[4] == "registries" => Call::ListRegistries,
        (5, None, &Method::POST) if parts[4] == "registries" => Call::CreateRegistry,
        (6, None, &Method::GET) if parts[4] == "registries" => Call::GetRegistry,
        (6, None, &Method::PATCH) if parts[4] == "registries" => Call::PatchRegistry,
        (6, None, &Method::DELETE) if parts[4] == "registries" => Call::DeleteRegistry,
        (6, Some(v), &Method::POST) if parts[4] == "registries" => Call::RegistryVerb(v),
        (7, None, &Method::GET) if parts[6] == "devices" => Call::ListDevices,
        (7, None, &Method::POST) if parts[6] == "devices" => Call::CreateDevice,
        (8, None, &Method::GET) if parts[6] == "devices" => Call::GetDevice,
        (8, None, &Method::PATCH) if parts[6] == "devices" => Call::PatchDevice,
        (8, None, &Method::DELETE) if parts[6] == "devices" => Call::DeleteDevice,
        (8, Some(v), &Method::POST) if parts[6] == "devices" => Call::DeviceVerb(v),
        (8, Some(v), &Method::POST) if parts[6] == "groups" => Call::GroupVerb(v),
        (9, None, &Method::GET) if parts[6] == "devices" && parts[8] == "configVersions" => {
            Call::ConfigVersions
        }
        (9, None, &Method::GET) if parts[6] == "devices" && parts[8] == "states" => Call::States,
        _ => return None,
    };
    let name = match call {
        Call::ListRegistries | Call::CreateRegistry => parts[..4].join("/"),
        Call::ListDevices | Call::CreateDevice => parts[..6].join("/"),
        Call::ConfigVersions | Call::States => parts[..8].join("/"),
        _ => path.to_owned(),
    };
    Some((call, name))
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
    let response = match call {
        Call::ListRegistries => json_response(
            api.list_device_registries(req(pb::ListDeviceRegistriesRequest {
                parent: name,
                page_size: q.int("page_size")?.unwrap_or(0),
                page_token: q.first("page_token").unwrap_or_default().to_owned(),
            }))
            .await?
            .get_ref(),
        ),
        Call::CreateRegistry => json_response(
            api.create_device_registry(req(pb::CreateDeviceRegistryRequest {
                parent: name,
                device_registry: Some(parse_body(body)?),
            }))
            .await?
            .get_ref(),
        ),
        Call::GetRegistry => json_response(
            api.get_device_registry(req(pb::GetDeviceRegistryRequest { name }))
                .await?
                .get_ref(),
        ),
        Call::PatchRegistry => {
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
        Call::DeleteRegistry => json_response(
            api.delete_device_registry(req(pb::DeleteDeviceRegistryRequest { name }))
                .await?
                .get_ref(),
        ),
        Call::ListDevices => {
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
            json_response(
                api.list_devices(req(pb::ListDevicesRequest {
                    parent: name,
                    device_num_ids,
                    device_ids: q.all("device_ids"),
                    field_mask: q.mask("field_mask"),
                    gateway_list_options: filter
                        .map(|f| pb::GatewayListOptions { filter: Some(f) }),
                    page_size: q.int("page_size")?.unwrap_or(0),
                    page_token: q.first("page_token").unwrap_or_default().to_owned(),
                }))
                .await?
                .get_ref(),
            )
        }
        Call::CreateDevice => json_response(
            api.create_device(req(pb::CreateDeviceRequest {
                parent: name,
                device: Some(parse_body(body)?),
            }))
            .await?
            .get_ref(),
        ),
        Call::GetDevice => json_response(
            api.get_device(req(pb::GetDeviceRequest {
                name,
                field_mask: q.mask("field_mask"),
            }))
            .await?
            .get_ref(),
        ),
        Call::PatchDevice => {
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
        Call::DeleteDevice => json_response(
            api.delete_device(req(pb::DeleteDeviceRequest { name }))
                .await?
                .get_ref(),
        ),
        Call::ConfigVersions => json_response(
            api.list_device_config_versions(req(pb::ListDeviceConfigVersionsRequest {
                name,
                num_versions: q.int("num_versions")?.unwrap_or(0),
            }))
            .await?
            .get_ref(),
        ),
        Call::States => json_response(
            api.list_device_states(req(pb::ListDeviceStatesRequest {
                name,
                num_states: q.int("num_states")?.unwrap_or(0),
            }))
            .await?
            .get_ref(),
        ),
        Call::DeviceVerb(verb) => match verb.as_str() {
            "modifyCloudToDeviceConfig" => {
                let mut r: pb::ModifyCloudToDeviceConfigRequest = parse_body(body)?;
                r.name = name;
                json_response(api.modify_cloud_to_device_config(req(r)).await?.get_ref())
            }
            "sendCommandToDevice" => {
                let mut r: pb::SendCommandToDeviceRequest = parse_body(body)?;
                r.name = name;
                json_response(api.send_command_to_device(req(r)).await?.get_ref())
            }
            _ => {
                return Err(Status::not_found(format!(
                    "devices have no method ':{verb}'"
                )));
            }
        },
        Call::RegistryVerb(verb) | Call::GroupVerb(verb) => match verb.as_str() {
            "bindDeviceToGateway" => {
                let mut r: pb::BindDeviceToGatewayRequest = parse_body(body)?;
                r.parent = registry_of(&name);
                json_response(api.bind_device_to_gateway(req(r)).await?.get_ref())
            }
            "unbindDeviceFromGateway" => {
                let mut r: pb::UnbindDeviceFromGatewayRequest = parse_body(body)?;
                r.parent = registry_of(&name);
                json_response(api.unbind_device_from_gateway(req(r)).await?.get_ref())
            }
            "setIamPolicy" => {
                let mut r: iam::SetIamPolicyRequest = parse_body(body)?;
                r.resource = name;
                json_response(api.set_iam_policy(req(r)).await?.get_ref())
            }
            "getIamPolicy" => {
                let mut r: iam::GetIamPolicyRequest = parse_body(body)?;
                r.resource = name;
                json_response(api.get_iam_policy(req(r)).await?.get_ref())
            }
            "testIamPermissions" => {
                let mut r: iam::TestIamPermissionsRequest = parse_body(body)?;
                r.resource = name;
                json_response(api.test_iam_permissions(req(r)).await?.get_ref())
            }
            _ => {
                return Err(Status::not_found(format!(
                    "registries have no method ':{verb}'"
                )));
            }
        },
    };
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: Method, path: &str, expected: Option<(&str, &str)>) {
        let (p, verb) = split_path(path).unwrap();
        let got = route(&method, &p, verb).map(|(call, name)| {
            let kind = match call {
                Call::ListRegistries => "ListRegistries".to_owned(),
                Call::CreateRegistry => "CreateRegistry".to_owned(),
                Call::GetRegistry => "GetRegistry".to_owned(),
                Call::PatchRegistry => "PatchRegistry".to_owned(),
                Call::DeleteRegistry => "DeleteRegistry".to_owned(),
                Call::ListDevices => "ListDevices".to_owned(),
                Call::CreateDevice => "CreateDevice".to_owned(),
                Call::GetDevice => "GetDevice".to_owned(),
                Call::PatchDevice => "PatchDevice".to_owned(),
                Call::DeleteDevice => "DeleteDevice".to_owned(),
                Call::ConfigVersions => "ConfigVersions".to_owned(),
                Call::States => "States".to_owned(),
                Call::RegistryVerb(v) => format!("Registry:{v}"),
                Call::DeviceVerb(v) => format!("Device:{v}"),
                Call::GroupVerb(v) => format!("Group:{v}"),
            };
            (kind, name)
        });
        assert_eq!(
            got.as_ref().map(|(k, n)| (k.as_str(), n.as_str())),
            expected,
            "{method} {path}"
        );
    }

    #[test]
    fn rest_paths_map_to_methods() {
        let reg = "projects/p/locations/l/registries/r";
        check(
            Method::GET,
            "projects/p/locations/l/registries",
            Some(("ListRegistries", "projects/p/locations/l")),
        );
        check(
            Method::POST,
            "projects/p/locations/l/registries",
            Some(("CreateRegistry", "projects/p/locations/l")),
        );
        check(Method::PATCH, reg, Some(("PatchRegistry", reg)));
        check(
            Method::POST,
            &format!("{reg}:bindDeviceToGateway"),
            Some(("Registry:bindDeviceToGateway", reg)),
        );
        check(
            Method::POST,
            &format!("{reg}/devices"),
            Some(("CreateDevice", reg)),
        );
        check(
            Method::GET,
            &format!("{reg}/devices/123"),
            Some(("GetDevice", &format!("{reg}/devices/123"))),
        );
        check(
            Method::POST,
            &format!("{reg}/devices/d-1:modifyCloudToDeviceConfig"),
            Some((
                "Device:modifyCloudToDeviceConfig",
                &format!("{reg}/devices/d-1"),
            )),
        );
        check(
            Method::GET,
            &format!("{reg}/groups/g/devices/d-1/configVersions"),
            Some(("ConfigVersions", &format!("{reg}/devices/d-1"))),
        );
        check(
            Method::POST,
            &format!("{reg}/groups/g:getIamPolicy"),
            Some(("Group:getIamPolicy", &format!("{reg}/groups/g"))),
        );
        check(
            Method::GET,
            &format!("{reg}/devices/d%25x"),
            Some(("GetDevice", &format!("{reg}/devices/d%x"))),
        );
        check(Method::PUT, reg, None);
        check(Method::GET, "projects/p/locations/l/other", None);
    }

    #[test]
    fn queries_normalise_keys_and_drop_system_params() {
        let q = Query::parse(Some(
            "%24alt=json%3Benum-encoding%3Dint&deviceIds=a&deviceIds=b&fieldMask=a,b&pageSize=2",
        ));
        assert_eq!(q.all("device_ids"), vec!["a", "b"]);
        assert_eq!(q.int::<i32>("page_size").unwrap(), Some(2));
        assert!(q.first("$alt").is_none());
        assert!(
            Query::parse(Some("pageSize=x"))
                .int::<i32>("page_size")
                .is_err()
        );
    }
}
