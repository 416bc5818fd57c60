//! Fleet provisioning's admin REST surface (Perch's own, under a registry):
//!
//! - `GET|POST …/registries/R/bootstraps`, `GET|DELETE …/bootstraps/B`, `POST …/bootstraps/B:enable|:disable`
//! - `GET …/registries/R/provisioningPolicy`, `POST …/provisioningPolicy:add|:remove` `{"entries": […]}`
//! - `GET …/registries/R/provisioningDecisions?bootstrap=&reason=&pageSize=`
//! - `GET …/registries/R/provisioningApprovals?state=PENDING|APPROVED|DENIED`,
//!   `POST …/provisioningApprovals/D:approve|:deny` `{"keyFingerprint"}` (re-provisioning held by
//!   REQUIRE_APPROVAL; the fingerprint must be the pending request's)
//! - `GET|PUT …/registries/R/provisioningWebhook` `{"url", "timeoutMs", "onError": "DENY"|"ALLOW"}` (empty url clears)
//!
//! JSON is camelCase; errors are `google.rpc.Status` like the rest of the admin API.

use axum::body::Bytes;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use perch_core::RegistryName;
use serde::Deserialize;
use tonic::Status;

use super::to_status;
use crate::provisioning::ProvisioningService;
use crate::provisioning::model::{Bootstrap, PolicyEntry, Webhook};

/// The body of `:approve` / `:deny`: the key fingerprint the operator decides on.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApprovalDecision {
    #[serde(default)]
    key_fingerprint: String,
}

#[derive(Deserialize)]
struct Entries {
    #[serde(default)]
    entries: Vec<PolicyEntry>,
}

fn json<T: serde::Serialize>(v: &T) -> Response {
    axum::Json(serde_json::to_value(v).unwrap_or_default()).into_response()
}

fn body<T: serde::de::DeserializeOwned>(b: &Bytes) -> Result<T, Status> {
    serde_json::from_slice(b).map_err(|e| {
        Status::invalid_argument(format!(
            "the request body is not valid JSON for this method: {e}"
        ))
    })
}

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Serves a provisioning path, or `None` when the path is not one of them.
pub(crate) async fn handle(
    service: &ProvisioningService,
    method: &Method,
    path: &str,
    verb: Option<&str>,
    query: Option<&str>,
    raw: &Bytes,
) -> Option<Result<Response, Status>> {
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() < 7
        || parts[4] != "registries"
        || !matches!(
            parts[6],
            "bootstraps"
                | "provisioningPolicy"
                | "provisioningDecisions"
                | "provisioningWebhook"
                | "provisioningApprovals"
        )
    {
        return None;
    }
    let registry = match RegistryName::parse("parent", &parts[..6].join("/")) {
        Ok(r) => r,
        Err(e) => return Some(Err(Status::invalid_argument(e.to_string()))),
    };
    let result = async {
        let r = &registry;
        Ok(match (parts[6], parts.get(7).copied(), verb, method) {
            ("bootstraps", None, None, &Method::GET) => {
                json(&serde_json::json!({ "bootstraps": service.list_bootstraps(r).await.map_err(to_status)? }))
            }
            ("bootstraps", None, None, &Method::POST) => {
                let b: Bootstrap = body(raw)?;
                let (created, private_key) = service.create_bootstrap(r, b).await.map_err(to_status)?;
                let mut out = serde_json::to_value(&created).unwrap_or_default();
                if let Some(k) = private_key {
                    // Returned once: Perch keeps only the public key.
                    out["privateKey"] = k.into();
                }
                axum::Json(out).into_response()
            }
            ("bootstraps", Some(id), None, &Method::GET) => json(&service.get_bootstrap(r, id).await.map_err(to_status)?),
            ("bootstraps", Some(id), None, &Method::DELETE) => {
                service.delete_bootstrap(r, id).await.map_err(to_status)?;
                json(&serde_json::json!({}))
            }
            ("bootstraps", Some(id), Some(v @ ("enable" | "disable")), &Method::POST) => {
                json(&service.set_bootstrap_enabled(r, id, v == "enable").await.map_err(to_status)?)
            }
            ("provisioningPolicy", None, None, &Method::GET) => {
                json(&serde_json::json!({ "entries": service.list_policy_entries(r).await.map_err(to_status)? }))
            }
            ("provisioningPolicy", None, Some("add"), &Method::POST) => {
                let e: Entries = body(raw)?;
                json(&serde_json::json!({ "added": service.add_policy_entries(r, e.entries).await.map_err(to_status)? }))
            }
            ("provisioningPolicy", None, Some("remove"), &Method::POST) => {
                let e: Entries = body(raw)?;
                json(&serde_json::json!({ "removed": service.remove_policy_entries(r, &e.entries).await.map_err(to_status)? }))
            }
            ("provisioningWebhook", None, None, &Method::GET) => json(&service.get_webhook(r).await.map_err(to_status)?),
            ("provisioningWebhook", None, None, &Method::PUT) => {
                let w: Webhook = body(raw)?;
                json(&service.set_webhook(r, w).await.map_err(to_status)?)
            }
            ("provisioningDecisions", None, None, &Method::GET) => {
                let limit = query_value(query, "pageSize").and_then(|v| v.parse().ok()).unwrap_or(100);
                let decisions = service
                    .list_decisions(r, query_value(query, "bootstrap").as_deref(), query_value(query, "reason").as_deref(), limit)
                    .await
                    .map_err(to_status)?;
                json(&serde_json::json!({ "decisions": decisions }))
            }
            ("provisioningApprovals", None, None, &Method::GET) => {
                let state = query_value(query, "state");
                let approvals = service.list_approvals(r, state.as_deref()).await.map_err(to_status)?;
                json(&serde_json::json!({ "approvals": approvals }))
            }
            ("provisioningApprovals", Some(device), Some(v @ ("approve" | "deny")), &Method::POST) => {
                // The operator names the key decided on, so a newer request's key is never
                // approved in its place.
                let d: ApprovalDecision = body(raw)?;
                json(&service.decide_approval(r, device, &d.key_fingerprint, v == "approve").await.map_err(to_status)?)
            }
            _ => return Err(Status::not_found(format!("no provisioning method serves {method} /v1/{path}"))),
        })
    }
    .await;
    Some(result)
}
