//! How a REST request names its DeviceManager call: the path percent-decoded with its trailing
//! `:verb` split off and transparent `groups/{g}` segments dropped, the route table from
//! method and segments to a call and the resource name it acts on, and the query parameters.
//!
//! Owns the REST path and query grammar; `rest` runs the calls.

use std::collections::HashMap;

use axum::http::Method;
use tonic::Status;

use crate::mask::to_snake_case;

/// Query parameters, keys normalised to snake_case; repeated keys keep every value.
#[derive(Debug, Default)]
pub(super) struct Query(HashMap<String, Vec<String>>);

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
    pub(super) fn parse(raw: Option<&str>) -> Query {
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

    pub(super) fn first(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.first()).map(String::as_str)
    }

    pub(super) fn all(&self, key: &str) -> Vec<String> {
        self.0.get(key).cloned().unwrap_or_default()
    }

    pub(super) fn int<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, Status> {
        self.first(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    Status::invalid_argument(format!(
                        "query parameter '{key}' must be a number, got '{v}'"
                    ))
                })
            })
            .transpose()
    }

    pub(super) fn mask(&self, key: &str) -> Option<pbjson_types::FieldMask> {
        let paths = self.all(key);
        (!paths.is_empty()).then_some(pbjson_types::FieldMask { paths })
    }
}

/// Percent-decodes the path and splits off a trailing `:verb`; `groups/{g}` segments that
/// precede `devices` or a verb are dropped (SPEC.md §1.1).
pub(super) fn split_path(path: &str) -> Result<(String, Option<String>), Status> {
    let decoded: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
        })
        .collect::<Result<_, _>>()
        .map_err(|_| Status::invalid_argument("the request path is not valid UTF-8"))?;
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

/// What a REST call does to a collection's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    List,
    Create,
    Get,
    Patch,
    Delete,
}

/// How a REST call maps onto a DeviceManager method.
pub(super) enum Call {
    Registries(Op),
    Devices(Op),
    ConfigVersions,
    States,
    RegistryVerb(String),
    DeviceVerb(String),
    GroupVerb(String),
}

/// The operation a method without a custom verb performs on a collection (5 or 7 segments) or
/// on one resource (6 or 8).
fn op(method: &Method, on_resource: bool) -> Option<Op> {
    Some(match (method, on_resource) {
        (&Method::GET, false) => Op::List,
        (&Method::POST, false) => Op::Create,
        (&Method::GET, true) => Op::Get,
        (&Method::PATCH, true) => Op::Patch,
        (&Method::DELETE, true) => Op::Delete,
        _ => return None,
    })
}

pub(super) fn route(method: &Method, path: &str, verb: Option<String>) -> Option<(Call, String)> {
    let parts: Vec<&str> = path.split('/').collect();
    // projects/P/locations/L = 4 segments; /registries/R = 6; /devices/D = 8; /groups/G = 8.
    let call = match (parts.len(), verb, method) {
        (5 | 6, None, _) if parts[4] == "registries" => {
            Call::Registries(op(method, parts.len() == 6)?)
        }
        (6, Some(v), &Method::POST) if parts[4] == "registries" => Call::RegistryVerb(v),
        (7 | 8, None, _) if parts[6] == "devices" => Call::Devices(op(method, parts.len() == 8)?),
        (8, Some(v), &Method::POST) if parts[6] == "devices" => Call::DeviceVerb(v),
        (8, Some(v), &Method::POST) if parts[6] == "groups" => Call::GroupVerb(v),
        (9, None, &Method::GET) if parts[6] == "devices" && parts[8] == "configVersions" => {
            Call::ConfigVersions
        }
        (9, None, &Method::GET) if parts[6] == "devices" && parts[8] == "states" => Call::States,
        _ => return None,
    };
    let name = match call {
        Call::Registries(Op::List | Op::Create) => parts[..4].join("/"),
        Call::Devices(Op::List | Op::Create) => parts[..6].join("/"),
        Call::ConfigVersions | Call::States => parts[..8].join("/"),
        _ => path.to_owned(),
    };
    Some((call, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: Method, path: &str, expected: Option<(&str, &str)>) {
        let (p, verb) = split_path(path).unwrap();
        let got = route(&method, &p, verb).map(|(call, name)| {
            let kind = match call {
                Call::Registries(op) => format!("{op:?}Registries"),
                Call::Devices(op) => format!("{op:?}Devices"),
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
            Some(("CreateRegistries", "projects/p/locations/l")),
        );
        check(Method::PATCH, reg, Some(("PatchRegistries", reg)));
        check(
            Method::POST,
            &format!("{reg}:bindDeviceToGateway"),
            Some(("Registry:bindDeviceToGateway", reg)),
        );
        check(
            Method::POST,
            &format!("{reg}/devices"),
            Some(("CreateDevices", reg)),
        );
        check(
            Method::GET,
            &format!("{reg}/devices/123"),
            Some(("GetDevices", &format!("{reg}/devices/123"))),
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
            Some(("GetDevices", &format!("{reg}/devices/d%x"))),
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

    #[test]
    fn every_collection_method_has_its_route_and_others_none() {
        let reg = "projects/p/locations/l/registries/r";
        let dev = format!("{reg}/devices/d-1");
        check(Method::GET, reg, Some(("GetRegistries", reg)));
        check(Method::DELETE, reg, Some(("DeleteRegistries", reg)));
        check(
            Method::GET,
            &format!("{reg}/devices"),
            Some(("ListDevices", reg)),
        );
        check(Method::PATCH, &dev, Some(("PatchDevices", &dev)));
        check(Method::DELETE, &dev, Some(("DeleteDevices", &dev)));
        check(
            Method::GET,
            &format!("{dev}/states"),
            Some(("States", &dev)),
        );
        check(Method::PATCH, "projects/p/locations/l/registries", None);
        check(Method::DELETE, &format!("{reg}/devices"), None);
        check(Method::POST, &dev, None);
        check(Method::GET, &format!("{reg}/groups/g"), None);
        check(
            Method::GET,
            &format!("{dev}:modifyCloudToDeviceConfig"),
            None,
        );
    }
}
