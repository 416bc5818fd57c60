//! Gateways (SPEC.md §4.9): parsing attach payloads leniently, deciding whether a device may
//! attach under the gateway's auth method (and whether a live attachment still may after an
//! admin change), and the errors-topic message for a refusal. Pure: no I/O, time passed in.

use chrono::{DateTime, Utc};
use perch_core::model::{Device, GatewayAuthMethod};
use perch_registry::auth::verify_device_jwt;

/// The device JWT an attach payload carries, if any. Accepts `{"authorization": "…"}`, `{}`,
/// an empty payload, and the Node sample's `{ 'authorization' : <jwt> }` (single quotes,
/// unquoted token).
pub(crate) fn attach_token(payload: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        return v
            .get("authorization")
            .and_then(|a| a.as_str())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
    }
    // Lenient: find the value after `authorization` and a colon, quotes optional.
    let after = text.split_once("authorization")?.1;
    let value = after.split_once(':')?.1;
    let token: String = value
        .trim()
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | '+' | '/'))
        .collect();
    (!token.is_empty()).then_some(token)
}

/// Whether `device` may attach through `gateway`, given whether they are bound and the token
/// the attach carried. `Ok` holds the credential (PEM) the token was verified with, if one was
/// needed, so the attachment can be re-checked when credentials change; `Err` says why not (for
/// the errors topic and the log).
pub(crate) fn authorize_attach(
    gateway: &Device,
    device: &Device,
    bound: bool,
    token: Option<&str>,
    project: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>, String> {
    authorize(gateway, device, bound, || match token {
        None => Err(format!(
            "attaching `{}` needs its JWT in the attach payload",
            device.id
        )),
        Some(t) => verify_device_jwt(t, project, &device.credentials, now)
            .map(|v| {
                device
                    .credentials
                    .get(v.credential_index)
                    .map(|c| c.key.clone())
            })
            .map_err(|e| format!("the JWT of `{}` was refused: {e}", device.id)),
    })
}

/// Whether a live attachment still holds after an admin change (unbind, block, credentials,
/// the gateway's auth method): the rules of `authorize_attach`, with the credential the attach
/// token was verified with (`None`: attached without a token) standing in for the token.
pub(crate) fn recheck_attachment(
    gateway: &Device,
    device: &Device,
    bound: bool,
    credential: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    authorize(gateway, device, bound, || match credential {
        None => Err(format!(
            "`{}` was attached without a JWT, which gateway `{}` now requires",
            device.id, gateway.id
        )),
        Some(key) if holds_credential(device, key, now) => Ok(Some(key.to_owned())),
        Some(_) => Err(format!(
            "the credential `{}` attached with was removed or expired",
            device.id
        )),
    })
    .map(drop)
}

/// Whether `device` still has the credential `key` (PEM), unexpired at `now`.
pub(crate) fn holds_credential(device: &Device, key: &str, now: DateTime<Utc>) -> bool {
    device
        .credentials
        .iter()
        .any(|c| c.key == key && !c.is_expired_at(now))
}

/// The attach rules of `gatewayAuthMethod`, with the token check given by the caller.
fn authorize(
    gateway: &Device,
    device: &Device,
    bound: bool,
    check_token: impl FnOnce() -> Result<Option<String>, String>,
) -> Result<Option<String>, String> {
    if device.blocked {
        return Err(format!("device `{}` is blocked", device.id));
    }
    if device.gateway_config.is_gateway() {
        return Err(format!(
            "`{}` is a gateway; gateways cannot be attached",
            device.id
        ));
    }
    let check_bound = || {
        if bound {
            Ok(None)
        } else {
            Err(format!(
                "device `{}` is not bound to gateway `{}`",
                device.id, gateway.id
            ))
        }
    };
    match gateway.gateway_config.gateway_auth_method {
        GatewayAuthMethod::AssociationOnly => check_bound(),
        GatewayAuthMethod::DeviceAuthTokenOnly => check_token(),
        GatewayAuthMethod::AssociationAndDeviceAuthToken => {
            check_bound().and_then(|_| check_token())
        }
        GatewayAuthMethod::Unspecified => Err(format!(
            "gateway `{}` has no gatewayAuthMethod, so no device may attach through it",
            gateway.id
        )),
    }
}

/// The JSON IoT Core sent on `/devices/{gateway}/errors`.
pub(crate) fn error_message(
    error_type: &str,
    description: &str,
    device_id: &str,
    message_type: &str,
    topic: &str,
    packet_id: u16,
) -> String {
    serde_json::json!({
        "error_type": error_type,
        "description": description,
        "device_id": device_id,
        "mqtt_message_info": { "message_type": message_type, "topic": topic, "packet_id": packet_id },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use perch_core::model::{DeviceCredential, GatewayType, PublicKeyFormat};

    use super::*;

    fn device(id: &str, num_id: u64) -> Device {
        Device::new(id.parse().unwrap(), num_id)
    }

    fn gateway_with(method: GatewayAuthMethod) -> Device {
        let mut gw = device("gateway-1", 1);
        gw.gateway_config.gateway_type = GatewayType::Gateway;
        gw.gateway_config.gateway_auth_method = method;
        gw
    }

    #[test]
    fn a_live_attachment_is_rechecked_against_bindings_blocks_and_credentials() {
        use GatewayAuthMethod::*;
        let now = Utc::now();
        let mut child = device("child-1", 2);
        child.credentials.push(DeviceCredential {
            format: PublicKeyFormat::Es256Pem,
            key: "PEM-A".into(),
            expiration_time: None,
        });
        let mut blocked = child.clone();
        blocked.blocked = true;
        let mut expired = child.clone();
        expired.credentials[0].expiration_time = Some(now);
        // (gateway auth method, child, bound, credential attached with, still allowed)
        let cases = [
            (AssociationOnly, &child, true, None, true),
            (AssociationOnly, &child, false, None, false), // unbound
            (AssociationOnly, &blocked, true, None, false),
            (DeviceAuthTokenOnly, &child, false, Some("PEM-A"), true),
            (DeviceAuthTokenOnly, &child, false, Some("PEM-B"), false), // credential removed
            (DeviceAuthTokenOnly, &expired, false, Some("PEM-A"), false),
            (DeviceAuthTokenOnly, &child, true, None, false), // the method changed to need a JWT
            (
                AssociationAndDeviceAuthToken,
                &child,
                true,
                Some("PEM-A"),
                true,
            ),
            (
                AssociationAndDeviceAuthToken,
                &child,
                false,
                Some("PEM-A"),
                false,
            ),
            (Unspecified, &child, true, Some("PEM-A"), false),
        ];
        for (method, d, bound, credential, allowed) in cases {
            let got = recheck_attachment(&gateway_with(method), d, bound, credential, now);
            assert_eq!(
                got.is_ok(),
                allowed,
                "{method:?} bound={bound} {credential:?}: {got:?}"
            );
        }
    }

    #[test]
    fn attach_payloads_are_read_leniently() {
        assert_eq!(attach_token(br#"{"authorization" : ""}"#), None);
        assert_eq!(attach_token(b"{}"), None);
        assert_eq!(attach_token(b""), None);
        assert_eq!(
            attach_token(br#"{"authorization": "a.b.c"}"#).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            attach_token(b"{ 'authorization' : eyJh.eyJi.c2ln }").as_deref(),
            Some("eyJh.eyJi.c2ln")
        );
    }
}
