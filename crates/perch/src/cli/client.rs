//! A small JSON client for the admin REST API, with errors a user can act on.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::Method;
use serde_json::Value;

use super::ClientArgs;
use crate::datadir::read_endpoints;

/// How long one admin call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to a server's admin API.
#[derive(Debug)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(args: &ClientArgs) -> Result<AdminClient> {
        let base = match &args.endpoint {
            Some(e) if e.starts_with("http://") || e.starts_with("https://") => {
                e.trim_end_matches('/').to_owned()
            }
            Some(e) => format!("http://{}", e.trim_end_matches('/')),
            None => format!("http://{}", read_endpoints(&args.data_dir)?.admin),
        };
        let token = match std::env::var("PERCH_TOKEN") {
            Ok(t) if !t.is_empty() => Some(t),
            _ => std::fs::read_to_string(args.data_dir.join("admin-token"))
                .ok()
                .map(|t| t.trim().to_owned()),
        };
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .no_proxy();
        if base.starts_with("https://")
            && let Ok(ca) = std::fs::read(args.data_dir.join("tls/ca.pem"))
        {
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&ca)?);
        }
        Ok(AdminClient {
            base,
            token,
            http: builder.build()?,
        })
    }

    /// Calls `method path` with an optional JSON body; returns the JSON response.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value> {
        let url = format!("{}/v1/{}", self.base, path);
        let mut request = self.http.request(method.clone(), &url).query(query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            anyhow!("cannot reach perch at {}: {e}; is `perch serve` running? (set --endpoint or --data-dir)", self.base)
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .context("the server closed the connection mid-response")?;
        let value: Value = if bytes.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&bytes).with_context(|| {
                format!("the server answered {status} with a body that is not JSON")
            })?
        };
        if !status.is_success() {
            let error = &value["error"];
            let code = error["status"].as_str().unwrap_or("ERROR");
            let message = error["message"].as_str().unwrap_or("no message");
            bail!("{code}: {message}");
        }
        Ok(value)
    }
}
