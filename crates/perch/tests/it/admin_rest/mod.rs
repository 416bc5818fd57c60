//! The cloudiot v1 REST transcoding, spoken with plain reqwest the way Google's clients speak
//! it (SPEC.md §2.1–2.2): JSON rules, paths, custom verbs, errors and auth.

mod errors_and_auth;
mod json;
mod paths;

use serde_json::{Value, json};

use crate::harness::*;

fn v1(path: &str) -> String {
    format!("/v1/{LOCATION}{path}")
}

const REGISTRIES: &str = "/registries";

/// A server with a registry `reg` made over REST.
async fn with_registry() -> (TestServer, Rest) {
    let server = TestServer::start(false);
    let rest = server.rest();
    rest.post(&v1(REGISTRIES), &json!({"id": "reg"})).await.ok();
    (server, rest)
}

async fn create_device(rest: &Rest, body: Value) -> Value {
    rest.post(&v1("/registries/reg/devices"), &body).await.ok()
}
