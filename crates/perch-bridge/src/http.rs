//! The HTTP device bridge (`cloudiotdevice.googleapis.com` DeviceService, SPEC.md §5):
//! `publishEvent`, `setState` and `getConfig`, each request carrying its own device JWT.
//!
//! Served on `--device-http` (HTTPS). Bodies accept camelCase and snake_case and every base64
//! flavour firmware sends; success is always exactly 200, as the samples require.
//!
//! Rates are limited per device with the MQTT bridge's settings (`crate::rate`): telemetry over
//! the token bucket and state reports within `state_min_interval` of the last one are answered
//! 429 `RESOURCE_EXHAUSTED`. `getConfig` only reads the registry; its `lastConfigSendTime` goes
//! through the batched activity flush.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRef, Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use perch_core::model::{Device, Registry};
use perch_core::{DeviceName, ErrorCode, RegistryName};
use perch_registry::auth::verify_device_jwt;
use serde::Deserialize;

use crate::bridge::Inner;
use crate::ingest::{self, Via};
use crate::rate::DeviceRates;
use crate::router::DeviceIdentity;
use crate::state::store_state;

/// Largest request body (a 256 KB payload, base64-encoded, with JSON around it).
const BODY_MAX_BYTES: usize = 512 * 1024;

type Failure = (ErrorCode, String);

fn failure(code: ErrorCode, message: impl Into<String>) -> Failure {
    (code, message.into())
}

fn error_response((code, message): Failure) -> Response {
    perch_api::error_response(code, message)
}

/// The router's state: the bridge, and the per-device rate state of HTTP requests.
#[derive(Clone)]
struct HttpState {
    bridge: Arc<Inner>,
    rates: Arc<DeviceRates>,
}

impl FromRef<HttpState> for Arc<Inner> {
    fn from_ref(state: &HttpState) -> Arc<Inner> {
        state.bridge.clone()
    }
}

impl FromRef<HttpState> for Arc<DeviceRates> {
    fn from_ref(state: &HttpState) -> Arc<DeviceRates> {
        state.rates.clone()
    }
}

pub(crate) fn router(bridge: Arc<Inner>) -> Router {
    let state = HttpState {
        bridge,
        rates: Arc::default(),
    };
    Router::new()
        .route("/{version}/projects/{project}/locations/{location}/registries/{registry}/devices/{*rest}", any(handle))
        .route(
            "/{version}/projects/{project}/locations/{location}/registries/{registry}/bootstraps/{rest}",
            axum::routing::post(provision),
        )
        .layer(axum::extract::DefaultBodyLimit::max(BODY_MAX_BYTES))
        .with_state(state)
}

/// Standard or URL-safe base64, padded or not.
/// The base64 `field` decoded: a `what` ("telemetry", "state") payload of at most `limit` bytes.
fn payload(field: &str, encoded: &str, what: &str, limit: usize) -> Result<Bytes, Failure> {
    let data = decode_base64(field, encoded)?;
    if data.len() > limit {
        return Err(failure(
            ErrorCode::InvalidArgument,
            format!(
                "the {what} payload has {} bytes; the limit is {limit}",
                data.len()
            ),
        ));
    }
    Ok(Bytes::from(data))
}

fn decode_base64(field: &str, s: &str) -> Result<Vec<u8>, Failure> {
    const LENIENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let url_safe = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);
    let standard = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
    standard
        .decode(s)
        .or_else(|_| url_safe.decode(s))
        .map_err(|_| {
            failure(
                ErrorCode::InvalidArgument,
                format!("'{field}' is not valid base64"),
            )
        })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PublishEventBody {
    #[serde(alias = "binary_data")]
    #[serde(rename = "binaryData")]
    binary_data: String,
    #[serde(alias = "sub_folder")]
    #[serde(rename = "subFolder")]
    sub_folder: String,
    #[serde(alias = "gateway_info")]
    #[serde(rename = "gatewayInfo")]
    gateway_info: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StateBody {
    #[serde(alias = "binary_data")]
    #[serde(rename = "binaryData")]
    binary_data: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SetStateBody {
    state: StateBody,
    #[serde(alias = "gateway_info")]
    #[serde(rename = "gatewayInfo")]
    gateway_info: Option<serde_json::Value>,
}

fn parse_json<T: for<'de> Deserialize<'de> + Default>(body: &Bytes) -> Result<T, Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        failure(
            ErrorCode::InvalidArgument,
            format!("the request body is not valid JSON for this method: {e}"),
        )
    })
}

fn no_gateways(info: &Option<serde_json::Value>) -> Result<(), Failure> {
    match info {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(v) if v.as_object().is_some_and(|o| o.is_empty()) => Ok(()),
        Some(_) => Err(failure(
            ErrorCode::Unimplemented,
            "gatewayInfo is not supported by Perch's HTTP bridge yet",
        )),
    }
}

async fn handle(
    State(bridge): State<Arc<Inner>>,
    State(rates): State<Arc<DeviceRates>>,
    Path((version, project, location, registry, rest)): Path<(
        String,
        String,
        String,
        String,
        String,
    )>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match serve(
        &bridge,
        &rates,
        &version,
        &project,
        &location,
        &registry,
        &rest,
        &method,
        query.as_deref(),
        &headers,
        &body,
    )
    .await
    {
        Ok(r) => r,
        Err(f) => error_response(f),
    }
}

/// The three DeviceService calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    PublishEvent,
    SetState,
    GetConfig,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::PublishEvent => "publishEvent",
            Call::SetState => "setState",
            Call::GetConfig => "getConfig",
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    bridge: &Inner,
    rates: &DeviceRates,
    version: &str,
    project: &str,
    location: &str,
    registry: &str,
    rest: &str,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Failure> {
    let (device, call) = parse_call(version, rest, method)?;
    let name = DeviceName::parse(
        "name",
        &format!("projects/{project}/locations/{location}/registries/{registry}/devices/{device}"),
    )
    .map_err(|e| failure(ErrorCode::InvalidArgument, e.to_string()))?;
    let (identity, registry, device) = authenticate(bridge, &name, headers).await?;
    match call {
        Call::PublishEvent => publish_event(bridge, rates, &identity, &registry, body).await,
        Call::SetState => set_state(bridge, rates, &identity, &registry, body).await,
        Call::GetConfig => get_config(bridge, &identity, &device, query),
    }
}

/// `{device}:publishEvent`, `{device}:setState` or `{device}/config` of API `version` with
/// `method` → (device, call).
fn parse_call<'a>(
    version: &str,
    rest: &'a str,
    method: &Method,
) -> Result<(&'a str, Call), Failure> {
    if version != "v1" && version != "v1beta1" {
        return Err(failure(
            ErrorCode::NotFound,
            format!("no device API version '{version}'; use v1"),
        ));
    }
    let (device, call) = if let Some(d) = rest.strip_suffix(":publishEvent") {
        (d, Call::PublishEvent)
    } else if let Some(d) = rest.strip_suffix(":setState") {
        (d, Call::SetState)
    } else if let Some(d) = rest.strip_suffix("/config") {
        (d, Call::GetConfig)
    } else {
        return Err(failure(
            ErrorCode::NotFound,
            format!("no device method serves '{rest}'"),
        ));
    };
    let expected_method = if call == Call::GetConfig {
        Method::GET
    } else {
        Method::POST
    };
    if *method != expected_method {
        return Err(failure(
            ErrorCode::NotFound,
            format!("{} takes {expected_method}, not {method}", call.name()),
        ));
    }
    Ok((device, call))
}

async fn publish_event(
    bridge: &Inner,
    rates: &DeviceRates,
    identity: &DeviceIdentity,
    registry: &Registry,
    body: &Bytes,
) -> Result<Response, Failure> {
    if !rates.telemetry(identity.num_id, &bridge.options) {
        return Err(failure(
            ErrorCode::ResourceExhausted,
            format!(
                "device `{}` sends telemetry faster than {} messages per second (burst {})",
                identity.device_id,
                bridge.options.telemetry_per_second,
                bridge.options.telemetry_burst
            ),
        ));
    }
    let body: PublishEventBody = parse_json(body)?;
    no_gateways(&body.gateway_info)?;
    let limit = bridge.options.telemetry_max_bytes;
    let data = payload("binaryData", &body.binary_data, "telemetry", limit)?;
    ingest::telemetry(
        bridge,
        registry,
        identity,
        &body.sub_folder,
        data,
        Via::Http,
    )
    .await
    .map_err(|e| failure(e.code(), e.to_string()))?;
    Ok(ok_json(serde_json::json!({})))
}

async fn set_state(
    bridge: &Inner,
    rates: &DeviceRates,
    identity: &DeviceIdentity,
    registry: &Registry,
    body: &Bytes,
) -> Result<Response, Failure> {
    if !rates.state(identity.num_id, &bridge.options) {
        return Err(failure(
            ErrorCode::ResourceExhausted,
            format!(
                "device `{}` reports state more often than once per {} ms",
                identity.device_id,
                bridge.options.state_min_interval.as_millis()
            ),
        ));
    }
    let body: SetStateBody = parse_json(body)?;
    no_gateways(&body.gateway_info)?;
    let limit = bridge.options.state_max_bytes;
    let data = payload("state.binaryData", &body.state.binary_data, "state", limit)?;
    store_state(bridge, identity, registry, data)
        .await
        .map_err(|r| failure(r.code, r.message))?;
    Ok(ok_json(serde_json::json!({})))
}

fn get_config(
    bridge: &Inner,
    identity: &DeviceIdentity,
    device: &Device,
    query: Option<&str>,
) -> Result<Response, Failure> {
    let local = local_version(query)?;
    let latest = device.config.version;
    if local > latest {
        return Err(failure(
            ErrorCode::OutOfRange,
            format!("local_version {local} is newer than the latest config version {latest}"),
        ));
    }
    // Bookkeeping only: batched with the activity times, never a registry write per read.
    bridge
        .activity
        .config_sent(&identity.registry, identity.num_id, bridge.clock.now());
    let mut out = serde_json::json!({ "version": latest.to_string() });
    // The device already has the latest version: nothing to send but the number.
    if local != latest && !device.config.binary_data.is_empty() {
        out["binaryData"] = STANDARD.encode(&device.config.binary_data).into();
    }
    Ok(ok_json(out))
}

fn ok_json(v: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

fn local_version(query: Option<&str>) -> Result<i64, Failure> {
    let Some(q) = query else { return Ok(0) };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "local_version" || k == "localVersion" {
            return v.parse().map_err(|_| {
                failure(
                    ErrorCode::InvalidArgument,
                    format!("local_version must be a number, got '{v}'"),
                )
            });
        }
    }
    Ok(0)
}

/// The device JWT in `Authorization: Bearer …`, checked against the device's credentials.
async fn authenticate(
    bridge: &Inner,
    name: &DeviceName,
    headers: &HeaderMap,
) -> Result<(DeviceIdentity, Registry, Device), Failure> {
    let token = bearer(headers)?;
    let registry = bridge
        .registry
        .get_registry(&name.registry)
        .await
        .map_err(|e| failure(e.code(), e.to_string()))?;
    let device = bridge
        .registry
        .get_device(name)
        .await
        .map_err(|e| failure(e.code(), e.to_string()))?;
    if !registry.http_state.is_enabled() {
        return Err(failure(
            ErrorCode::PermissionDenied,
            format!("HTTP is disabled for registry `{}`", registry.id),
        ));
    }
    if device.blocked {
        return Err(failure(
            ErrorCode::PermissionDenied,
            format!("device `{}` is blocked", device.id),
        ));
    }
    verify_device_jwt(
        token,
        &name.registry.project,
        &device.credentials,
        bridge.clock.now(),
    )
    .map_err(|e| {
        failure(
            ErrorCode::Unauthenticated,
            format!("the device JWT was refused: {e}"),
        )
    })?;
    let identity = DeviceIdentity {
        registry: RegistryName::clone(&name.registry),
        device_id: device.id.clone(),
        num_id: device.num_id,
    };
    Ok((identity, registry, device))
}

/// `POST …/registries/R/bootstraps/B:provision` with the bootstrap JWT: the HTTP form of the
/// provisioning request (docs/provisioning.md). Both decisions answer 200 with the decision.
async fn provision(
    State(bridge): State<Arc<Inner>>,
    Path((version, project, location, registry, rest)): Path<(
        String,
        String,
        String,
        String,
        String,
    )>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        if version != "v1" && version != "v1beta1" {
            return Err(failure(
                ErrorCode::NotFound,
                format!("no device API version '{version}'; use v1"),
            ));
        }
        let bootstrap = rest
            .strip_suffix(":provision")
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                failure(
                    ErrorCode::NotFound,
                    format!("no bootstrap method serves '{rest}'; use B:provision"),
                )
            })?;
        let registry = RegistryName::parse(
            "name",
            &format!("projects/{project}/locations/{location}/registries/{registry}"),
        )
        .map_err(|e| failure(ErrorCode::InvalidArgument, e.to_string()))?;
        let token = bearer(&headers)?;
        let service = &bridge.provisioning;
        service
            .authenticate(&registry, bootstrap, token, bridge.clock.now())
            .await
            .map_err(|e| {
                failure(
                    ErrorCode::Unauthenticated,
                    format!("the bootstrap JWT was refused: {e}"),
                )
            })?;
        let request: perch_registry::provisioning::model::ProvisionRequest = parse_json(&body)?;
        let decision = service
            .provision(&registry, bootstrap, request)
            .await
            .map_err(|e| failure(e.code(), e.to_string()))?;
        Ok(ok_json(crate::mqtt::bootstrap::answer(
            &registry, &decision,
        )))
    }
    .await;
    result.unwrap_or_else(error_response)
}

fn bearer(headers: &HeaderMap) -> Result<&str, Failure> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
        })
        .ok_or_else(|| {
            failure(
                ErrorCode::Unauthenticated,
                "the request needs 'Authorization: Bearer <JWT>'",
            )
        })
}
