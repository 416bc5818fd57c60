//! Bootstrap connections (docs/provisioning.md): a device holding only its batch's bootstrap
//! credential connects as `projects/P/locations/L/registries/R/bootstraps/B`, subscribes to
//! `/bootstraps/B/responses/{rid}`, publishes its request to `/bootstraps/B/requests/{rid}`, and
//! reads the decision. It can do nothing else: any other packet or topic closes the connection.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use perch_core::RegistryName;
use perch_registry::auth::JWT_CLOCK_SKEW;
use perch_registry::provisioning::model::ProvisionRequest;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::bridge::Inner;
use crate::mqtt::codec::{Connect, ConnectReturnCode, Packet, Publish, QoS, SubAck, Subscribe};
use crate::mqtt::connection::connack;
use crate::mqtt::refusal::Refusal;
use crate::mqtt::wire::{Read, Wire};

/// How long a bootstrap connection may stay open: enough to ask and read the answer.
pub(crate) const BOOTSTRAP_SESSION_MAX: Duration = Duration::from_secs(5 * 60);
/// Requests one bootstrap connection may send.
pub(crate) const BOOTSTRAP_REQUESTS_MAX: usize = 10;

fn valid_request_id(rid: &str) -> bool {
    (8..=64).contains(&rid.len())
        && rid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `projects/P/locations/L/registries/R/bootstraps/B` → (registry, bootstrap id).
pub(crate) fn parse_client_id(client_id: &str) -> Option<(RegistryName, String)> {
    let (registry, bootstrap) = client_id.rsplit_once("/bootstraps/")?;
    let registry = RegistryName::parse("client_id", registry).ok()?;
    (!bootstrap.is_empty() && !bootstrap.contains('/')).then(|| (registry, bootstrap.to_owned()))
}

/// The answer a device gets: the stored decision, plus how to connect as itself and, for
/// `generate_key`, its private key (which is never stored).
pub(crate) fn answer(
    registry: &RegistryName,
    decision: &perch_registry::provisioning::model::Decision,
) -> serde_json::Value {
    let mut v = serde_json::to_value(decision).unwrap_or_default();
    if decision.decision == "ALLOWED" {
        v["mqtt"] = serde_json::json!({ "client_id": format!("{registry}/devices/{}", decision.claims.device_id) });
        if let Some(key) = &decision.private_key {
            v["private_key"] = key.clone().into();
        }
    }
    v
}

/// Checks the bootstrap's JWT and answers the CONNACK; the session's deadline (the token's
/// expiry plus the skew, at most `BOOTSTRAP_SESSION_MAX`) once accepted.
async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    bridge: &Inner,
    wire: &mut Wire<S>,
    connect: &Connect,
    registry: &RegistryName,
    bootstrap: &str,
) -> Option<Instant> {
    let service = &bridge.provisioning;
    let Some(password) = connect
        .password
        .as_ref()
        .and_then(|p| std::str::from_utf8(p).ok())
        .filter(|p| !p.is_empty())
    else {
        let _ = wire.send(&connack(Refusal::NoPassword.code())).await;
        return None;
    };
    let now = bridge.clock.now();
    let expires_at = match service
        .authenticate(registry, bootstrap, password, now)
        .await
    {
        Ok((_, exp)) => exp,
        Err(e) => {
            tracing::debug!(%registry, bootstrap, error = %e, "bootstrap connection refused");
            let _ = wire.send(&connack(Refusal::Token(&e).code())).await;
            return None;
        }
    };
    if wire
        .send(&connack(ConnectReturnCode::Accepted))
        .await
        .is_err()
    {
        return None;
    }
    let until_token_lapses = (expires_at + JWT_CLOCK_SKEW - now)
        .to_std()
        .unwrap_or_default();
    Some(Instant::now() + until_token_lapses.min(BOOTSTRAP_SESSION_MAX))
}

/// Serves a bootstrap connection from its CONNECT to its end.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    bridge: &Inner,
    wire: &mut Wire<S>,
    connect: &Connect,
    registry: RegistryName,
    bootstrap: String,
) {
    let Some(deadline) = accept(bridge, wire, connect, &registry, &bootstrap).await else {
        return;
    };
    let prefix = format!("/bootstraps/{bootstrap}/");
    let mut subscribed: HashMap<String, QoS> = HashMap::new();
    let mut requests = 0usize;
    let mut next_id: u16 = 0;
    loop {
        let read = match wire.buffered() {
            Some(r) => r,
            None => {
                tokio::select! {
                    n = wire.fill() => match n { Ok(0) | Err(_) => return, Ok(_) => continue },
                    _ = tokio::time::sleep_until(deadline) => return,
                }
            }
        };
        let packet = match read {
            Read::Packet(p) => p,
            Read::Eof | Read::Invalid(_) => return,
        };
        match packet {
            Packet::Subscribe(s) => {
                let Some(suback) = subscribe(&prefix, &bootstrap, &s, &mut subscribed) else {
                    return;
                };
                if wire.send(&suback).await.is_err() {
                    return;
                }
            }
            Packet::Publish(p) => {
                let Some(rid) = request_id(&prefix, &p.topic) else {
                    tracing::debug!(bootstrap, topic = %p.topic, "bootstrap connection published elsewhere; closing");
                    return;
                };
                requests += 1;
                if requests > BOOTSTRAP_REQUESTS_MAX || p.qos == QoS::ExactlyOnce {
                    return;
                }
                if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id)
                    && wire.send(&Packet::PubAck(id)).await.is_err()
                {
                    return;
                }
                let answer = provision(bridge, &registry, &bootstrap, &rid, &p.payload).await;
                // Only the connection that asked, and only on the response topic it subscribed to.
                let Some(qos) = subscribed.get(&rid).copied() else {
                    continue;
                };
                let response = response(&prefix, &rid, qos, &answer, &mut next_id);
                if wire.send(&response).await.is_err() {
                    return;
                }
            }
            Packet::PubAck(_) => {}
            Packet::PingReq => {
                if wire.send(&Packet::PingResp).await.is_err() {
                    return;
                }
            }
            Packet::Unsubscribe(u) => {
                if wire.send(&Packet::UnsubAck(u.packet_id)).await.is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// The SUBACK for response topics of this bootstrap (`prefix`); None when a filter is anything
/// else, which closes the connection.
fn subscribe(
    prefix: &str,
    bootstrap: &str,
    s: &Subscribe,
    subscribed: &mut HashMap<String, QoS>,
) -> Option<Packet> {
    let mut codes = Vec::new();
    for (filter, qos) in &s.filters {
        let rid = filter
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("responses/"));
        match rid {
            Some(rid) if valid_request_id(rid) => {
                let granted = (*qos).min(QoS::AtLeastOnce);
                subscribed.insert(rid.to_owned(), granted);
                codes.push(granted as u8);
            }
            _ => {
                tracing::debug!(
                    bootstrap,
                    filter,
                    "bootstrap connection subscribed elsewhere; closing"
                );
                return None;
            }
        }
    }
    Some(Packet::SubAck(SubAck {
        packet_id: s.packet_id,
        return_codes: codes,
    }))
}

/// The answer to provisioning request `rid` (its JSON `payload`): the decision, or a denial.
async fn provision(
    bridge: &Inner,
    registry: &RegistryName,
    bootstrap: &str,
    rid: &str,
    payload: &[u8],
) -> serde_json::Value {
    match serde_json::from_slice::<ProvisionRequest>(payload) {
        Ok(mut request) => {
            request.request_id = rid.to_owned();
            match bridge
                .provisioning
                .provision(registry, bootstrap, request)
                .await
            {
                Ok(decision) => answer(registry, &decision),
                Err(e) => {
                    serde_json::json!({ "request_id": rid, "decision": "DENIED", "reason": "INTERNAL", "message": e.to_string() })
                }
            }
        }
        Err(e) => serde_json::json!({
            "request_id": rid, "decision": "DENIED", "reason": "INVALID_REQUEST",
            "message": format!("the request is not valid JSON: {e}"),
        }),
    }
}

/// The request id of a publish to `{prefix}requests/{rid}`, if that is its topic.
fn request_id(prefix: &str, topic: &str) -> Option<String> {
    topic
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix("requests/"))
        .filter(|r| valid_request_id(r))
        .map(str::to_owned)
}

/// The answer to request `rid` on its response topic, at the QoS subscribed with (`next_id`
/// numbers QoS 1 answers).
fn response(
    prefix: &str,
    rid: &str,
    qos: QoS,
    answer: &serde_json::Value,
    next_id: &mut u16,
) -> Packet {
    let packet_id = (qos == QoS::AtLeastOnce).then(|| {
        *next_id = next_id.wrapping_add(1).max(1);
        *next_id
    });
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: format!("{prefix}responses/{rid}"),
        packet_id,
        payload: Bytes::from(answer.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_client_ids() {
        let (r, b) =
            parse_client_id("projects/p/locations/l/registries/reg/bootstraps/lot-7").unwrap();
        assert_eq!(r.registry.as_str(), "reg");
        assert_eq!(b, "lot-7");
        assert!(parse_client_id("projects/p/locations/l/registries/reg/devices/d").is_none());
        assert!(parse_client_id("projects/p/locations/l/registries/reg/bootstraps/").is_none());
        assert!(valid_request_id("a1b2c3d4"));
        assert!(!valid_request_id("short"));
        assert!(!valid_request_id("has/slash/inside"));
    }
}
