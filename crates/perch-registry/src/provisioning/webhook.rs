//! The operator's provisioning webhook: setting and reading it per registry, and asking it about
//! a request (the last check before a device is registered). A redirect is never followed; an
//! unreachable, failing or slow webhook allows or refuses as its `onError` says.
//!
//! Owns the HTTP exchange and what each answer means; not when it is asked (`evaluate`).

use perch_core::RegistryName;
use perch_store::RecordKind;

use super::model::{Bootstrap, ProvisionRequest, Reason, Webhook, WebhookOnError};
use super::records::{decode, encode};
use super::request::{Refusal, truncated};
use super::{
    ProvisioningService, WEBHOOK_REASON_MAX_BYTES, WEBHOOK_TIMEOUT_DEFAULT_MS,
    WEBHOOK_TIMEOUT_MAX_MS,
};
use crate::Result;
use perch_core::Rejection;

/// The client webhooks are asked with. Webhook URLs are operator-trusted, but a redirect is
/// never followed: the operator named the host that decides (a 3xx is answered WEBHOOK_ERROR).
pub(super) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

impl ProvisioningService {
    /// Sets (or, with an empty URL, clears) the registry's provisioning webhook.
    pub async fn set_webhook(
        &self,
        registry: &RegistryName,
        mut webhook: Webhook,
    ) -> Result<Webhook> {
        self.registry.get_registry(registry).await?;
        let key = format!("{registry}");
        if webhook.url.is_empty() {
            self.store()
                .delete_record(RecordKind::Settings, &key)
                .await?;
            return Ok(Webhook::default());
        }
        if !(webhook.url.starts_with("http://") || webhook.url.starts_with("https://")) {
            return Err(Rejection::invalid_argument(format!(
                "the webhook url must be http:// or https://, got '{}'",
                webhook.url
            ))
            .into());
        }
        if webhook.timeout_ms == 0 {
            webhook.timeout_ms = WEBHOOK_TIMEOUT_DEFAULT_MS;
        }
        if webhook.timeout_ms > WEBHOOK_TIMEOUT_MAX_MS {
            return Err(Rejection::invalid_argument(format!(
                "the webhook timeout is at most {WEBHOOK_TIMEOUT_MAX_MS} ms"
            ))
            .into());
        }
        self.store()
            .put_record(RecordKind::Settings, &key, encode(&webhook)?, false)
            .await?;
        Ok(webhook)
    }

    pub async fn get_webhook(&self, registry: &RegistryName) -> Result<Webhook> {
        match self
            .store()
            .get_record(RecordKind::Settings, &registry.to_string())
            .await?
        {
            Some(b) => decode(&b),
            None => Ok(Webhook::default()),
        }
    }

    /// Asks the operator's webhook; `Err` is the refusal.
    pub(super) async fn ask_webhook(
        &self,
        webhook: &Webhook,
        b: &Bootstrap,
        request: &ProvisionRequest,
        fingerprint: &str,
    ) -> std::result::Result<(), Refusal> {
        let body = serde_json::json!({
            "registry": b.registry,
            "bootstrap": b.id,
            "lot": b.lot,
            "claims": request.claims,
            "key_fingerprint": fingerprint,
        });
        let timeout = std::time::Duration::from_millis(webhook.timeout_ms.max(1));
        let response = match self
            .http
            .post(&webhook.url)
            .timeout(timeout)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return on_error(webhook, Reason::WebhookTimeout, no_answer(webhook));
            }
            Err(e) => {
                return on_error(
                    webhook,
                    Reason::WebhookError,
                    format!("the webhook could not be reached: {e}"),
                );
            }
        };
        answer(webhook, response, timeout).await
    }
}

/// A webhook failure as `onError` says: allowed, or refused with `reason`.
fn on_error(
    webhook: &Webhook,
    reason: Reason,
    message: String,
) -> std::result::Result<(), Refusal> {
    match webhook.on_error {
        WebhookOnError::Allow => Ok(()),
        WebhookOnError::Deny => Err((reason, message)),
    }
}

fn no_answer(webhook: &Webhook) -> String {
    format!(
        "the webhook did not answer within {} ms",
        webhook.timeout_ms
    )
}

/// What the webhook's response means: its `{"allow": bool, "reason"}` body read within
/// `timeout`, a redirect refused, any other failure as `onError` says.
async fn answer(
    webhook: &Webhook,
    response: reqwest::Response,
    timeout: std::time::Duration,
) -> std::result::Result<(), Refusal> {
    if response.status().is_redirection() {
        // A misconfiguration, not an outage: refused even with `onError: ALLOW`.
        let to = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nowhere");
        return Err((
            Reason::WebhookError,
            format!(
                "the webhook answered HTTP {} (a redirect to `{}`); redirects are not followed: set the webhook url to the final address",
                response.status(),
                truncated(to, 256)
            ),
        ));
    }
    if !response.status().is_success() {
        return on_error(
            webhook,
            Reason::WebhookError,
            format!("the webhook answered HTTP {}", response.status()),
        );
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        allow: bool,
        #[serde(default)]
        reason: String,
    }
    match tokio::time::timeout(timeout, response.json::<Answer>()).await {
        Ok(Ok(a)) if a.allow => Ok(()),
        Ok(Ok(a)) => Err((
            Reason::WebhookDenied,
            if a.reason.is_empty() {
                "the webhook said no".into()
            } else {
                format!(
                    "the webhook said no: {}",
                    truncated(&a.reason, WEBHOOK_REASON_MAX_BYTES)
                )
            },
        )),
        Ok(Err(e)) => on_error(
            webhook,
            Reason::WebhookError,
            format!("the webhook's answer is not {{\"allow\": bool}}: {e}"),
        ),
        Err(_) => on_error(webhook, Reason::WebhookTimeout, no_answer(webhook)),
    }
}
