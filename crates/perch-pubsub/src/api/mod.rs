//! `google.pubsub.v1` over gRPC (`grpc`, with StreamingPull in `streaming` and the fixed IAM
//! policy in `iam`) and REST (`rest`), with proto ⇄ domain conversions in `convert`. Errors map
//! to `tonic::Status` in one place (`to_status`, through `perch_api`); REST renders that as
//! `google.rpc.Status` JSON (`perch_api::status_response`).

mod convert;
pub mod grpc;
mod iam;
pub mod rest;
mod streaming;

use crate::Error;

/// The gRPC status for a Pub/Sub error; internal failures get a request id, the log the cause.
pub fn to_status(err: Error) -> tonic::Status {
    perch_api::status(err.code(), err.to_string())
}

/// `messageRetentionDuration` → `message_retention_duration`.
pub(crate) fn to_snake_case(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The top-level field of a mask path (`push_config.push_endpoint` → `push_config`).
pub(crate) fn top_level(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

pub(crate) fn mask_paths(mask: Option<pbjson_types::FieldMask>) -> Vec<String> {
    mask.map(|m| {
        m.paths
            .iter()
            .flat_map(|p| p.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(to_snake_case)
            .collect()
    })
    .unwrap_or_default()
}
