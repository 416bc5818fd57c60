//! The storm's setup through the admin REST API of the server under test: a topic, a registry
//! routing events to it and the bootstrap credential the devices share.

use anyhow::{Context, Result, bail};
use perch_device::SigningKey;
use perch_device::jwt::Algorithm;
use reqwest::Method;
use serde_json::{Value, json};

use super::{BOOTSTRAP_ID, ProvisionBenchArgs};

/// The admin REST API of the server under test.
#[derive(Debug)]
pub(super) struct Admin {
    pub(super) base: String,
    pub(super) token: Option<String>,
    pub(super) http: reqwest::Client,
}

impl Admin {
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}/v1/{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = response.status();
        let bytes = response.bytes().await?;
        let value: Value = if bytes.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{method} {path} answered {status} with non-JSON"))?
        };
        if !status.is_success() {
            bail!(
                "{method} {path}: {} {}",
                value["error"]["status"].as_str().unwrap_or("ERROR"),
                value["error"]["message"].as_str().unwrap_or("")
            );
        }
        Ok(value)
    }
}

/// Creates the topic, the registry routing events to it, and the bootstrap credential; returns
/// the registry's name and the bootstrap's private key.
pub(super) async fn setup(
    admin: &Admin,
    args: &ProvisionBenchArgs,
    registry_id: &str,
    suffix: &str,
) -> Result<(String, SigningKey)> {
    let topic = format!(
        "projects/{}/topics/bench-prov-{suffix}-events",
        args.project
    );
    admin
        .call(Method::PUT, &topic, Some(&json!({})))
        .await
        .context("cannot create the events topic")?;
    let location = format!("projects/{}/locations/{}", args.project, args.location);
    let body = json!({
        "id": registry_id,
        "eventNotificationConfigs": [{ "pubsubTopicName": topic }],
    });
    admin
        .call(Method::POST, &format!("{location}/registries"), Some(&body))
        .await
        .context("cannot create the bench registry")?;
    let registry = format!("{location}/registries/{registry_id}");
    let mut bootstrap = json!({ "id": BOOTSTRAP_ID, "deviceQuota": args.devices });
    if let Some(rate) = args.max_provisions_per_second {
        bootstrap["maxProvisionsPerSecond"] = rate.into();
    }
    let created = admin
        .call(
            Method::POST,
            &format!("{registry}/bootstraps"),
            Some(&bootstrap),
        )
        .await
        .context("cannot create the bootstrap credential")?;
    let private = created["privateKey"]
        .as_str()
        .context("the server returned no privateKey for the bootstrap it made")?;
    let key = SigningKey::from_pem(private.as_bytes(), Algorithm::Es256)?;
    Ok((registry, key))
}

/// How many devices the server says the storm's bootstrap provisioned (`None` if it cannot
/// say).
pub(super) async fn server_provisioned(admin: &Admin, registry: &str) -> Option<u64> {
    admin
        .call(
            Method::GET,
            &format!("{registry}/bootstraps/{BOOTSTRAP_ID}"),
            None,
        )
        .await
        .ok()
        .and_then(|b| {
            let p = &b["provisioned"];
            p.as_u64().or_else(|| p.as_str()?.parse().ok())
        })
}
