//! One MQTT connection: the handshake (CONNECT → JWT → CONNACK), then the loop that drives its
//! `Session` — packets from the `Wire`, control messages, the session's next deadline and
//! shutdown in, the session's actions out (packets queued on the wire, effects run against the
//! bridge by `effects`, their outcomes fed back).
//!
//! The handshake ends in a `Session` that knows its identity, so nothing after re-derives
//! identity from strings (STYLE.md P3). The session itself does no I/O (`session/mod.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use perch_core::model::{Device, Registry};
use perch_core::{DeviceName, ErrorCode};
use perch_registry::auth::{JWT_CLOCK_SKEW, verify_device_jwt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::bridge::Inner;
use crate::mqtt::close::CloseReason;
use crate::mqtt::codec::{ConnAck, Connect, ConnectReturnCode, Packet};
use crate::mqtt::effects;
use crate::mqtt::refusal::Refusal;
use crate::mqtt::session::{Action, Event, Handshake, Now, Session};
use crate::mqtt::wire::{Pumped, Read, Wire};
use crate::router::DeviceIdentity;
use crate::sessions::{CONTROL_CHANNEL_CAPACITY, Control};

/// Largest packet accepted before CONNECT succeeded.
const CONNECT_MAX_PACKET_BYTES: usize = 64 * 1024;
/// Serves one connection to its end.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
    bridge: Arc<Inner>,
    stream: S,
    peer: SocketAddr,
) {
    let mut wire = Wire::new(
        stream,
        // A CONNECT with a JWT is a few KB: nobody buffers telemetry-sized packets unauthenticated.
        CONNECT_MAX_PACKET_BYTES.min(bridge.options.max_packet_bytes),
        bridge.options.outbound_queue_max_bytes,
        bridge.options.write_timeout,
    );
    let connect = match tokio::time::timeout(bridge.options.connect_timeout, wire.read()).await {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time; closing");
            return;
        }
        Ok(Read::Eof) => return,
        Ok(Read::Invalid(e)) => {
            tracing::debug!(%peer, error = %e, "invalid first packet");
            if let Some(refusal) = Refusal::of_decode_error(&e) {
                let _ = wire.send(&connack(refusal.code())).await;
            }
            return;
        }
        Ok(Read::Packet(Packet::Connect(c))) => c,
        Ok(Read::Packet(other)) => {
            tracing::debug!(%peer, packet = ?std::mem::discriminant(&other), "[MQTT-3.1.0-1] first packet must be CONNECT");
            return;
        }
    };
    if let Some((registry, bootstrap)) = crate::mqtt::bootstrap::parse_client_id(&connect.client_id)
    {
        crate::mqtt::bootstrap::serve(&bridge, &mut wire, &connect, registry, bootstrap).await;
        return;
    }
    let (mut session, rx) = match handshake(&bridge, &connect).await {
        Ok(s) => s,
        Err((code, reason)) => {
            metrics::counter!("perch_mqtt_connects_total", "result" => "refused").increment(1);
            tracing::debug!(%peer, client_id = %connect.client_id, code = u8::from(code), reason, "connection refused");
            let _ = wire.send(&connack(code)).await;
            return;
        }
    };
    if wire
        .send(&connack(ConnectReturnCode::Accepted))
        .await
        .is_err()
    {
        session.end();
        return;
    }
    wire.max_packet_bytes = bridge.options.max_packet_bytes;
    tracing::debug!(%peer, device = %session.identity().device_id, "device connected");
    let identity = session.identity().clone();
    metrics::counter!("perch_mqtt_connects_total", "result" => "accepted").increment(1);
    let live = metrics::gauge!("perch_mqtt_sessions");
    live.increment(1.0);
    let reason = drive(&bridge, &mut wire, &mut session, rx).await;
    session.finish();
    wire.flush_before_close().await;
    live.decrement(1.0);
    metrics::counter!("perch_mqtt_closes_total", "reason" => reason.label()).increment(1);
    if let Some((code, message)) = reason.status() {
        tracing::debug!(%peer, device = %identity.device_id, code = %code, reason = %message, "device disconnected");
        record_error(&bridge, &identity, code, message);
    }
}

/// Runs a session until it closes: everything already buffered first (e.g. SUBSCRIBEs pipelined
/// behind CONNECT), then whichever comes first of input, written output, a control message,
/// the session's next deadline and shutdown.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    bridge: &Inner,
    wire: &mut Wire<S>,
    session: &mut Session,
    mut rx: mpsc::Receiver<Control>,
) -> CloseReason {
    let mut shutdown = bridge.shutdown.clone();
    // (offset at which it is written, ticket) of every command queued and not yet written.
    let mut tickets: Vec<(u64, u64)> = Vec::new();
    loop {
        while let Some(read) = wire.buffered() {
            let event = match read {
                Read::Packet(p) => Event::Packet(p),
                Read::Eof => return CloseReason::Clean,
                Read::Invalid(e) => return CloseReason::Invalid(e),
            };
            if let Err(reason) = step(bridge, wire, session, &mut tickets, event).await {
                return reason;
            }
        }
        let (deadline, timer) = session.next_timer(wire.write_deadline());
        let event = tokio::select! {
            io = wire.pump() => match io {
                Ok(Pumped::Read(0)) | Err(_) => return CloseReason::Clean,
                Ok(Pumped::Read(_)) => continue,
                Ok(Pumped::Wrote) => {
                    let written = wire.written();
                    let done: Vec<u64> = tickets
                        .extract_if(.., |(end, _)| *end <= written)
                        .map(|(_, ticket)| ticket)
                        .collect();
                    if done.is_empty() {
                        continue;
                    }
                    Event::Written(done)
                }
            },
            control = rx.recv() => match control {
                Some(c) => Event::Control(c),
                None => return CloseReason::Clean,
            },
            _ = tokio::time::sleep_until(deadline) => Event::Timer(timer),
            _ = crate::bridge::stopped(&mut shutdown) => return CloseReason::ShuttingDown,
        };
        if let Err(reason) = step(bridge, wire, session, &mut tickets, event).await {
            return reason;
        }
    }
}

/// Hands one event to the session and carries out its actions in order; an effect's outcome
/// goes back to the session at once, and the actions it brings come before the rest.
async fn step<S: AsyncRead + AsyncWrite + Unpin>(
    bridge: &Inner,
    wire: &mut Wire<S>,
    session: &mut Session,
    tickets: &mut Vec<(u64, u64)>,
    event: Event,
) -> Result<(), CloseReason> {
    let mut actions: VecDeque<Action> = session.handle(event, now(bridge)).into();
    while let Some(action) = actions.pop_front() {
        match action {
            Action::Send(packet) => {
                wire.queue(&packet)?;
            }
            Action::SendCommand { packet, ticket } => match wire.queue(&packet) {
                Ok(end) => tickets.push((end, ticket)),
                Err(reason) => {
                    session.unsent(ticket);
                    return Err(reason);
                }
            },
            Action::Run(effect) => {
                if let Some(outcome) = effects::run(bridge, effect).await {
                    let more = session.handle(Event::Done(outcome), now(bridge));
                    for action in more.into_iter().rev() {
                        actions.push_front(action);
                    }
                }
            }
            Action::Close(reason) => return Err(reason),
        }
    }
    Ok(())
}

fn now(bridge: &Inner) -> Now {
    Now {
        at: Instant::now(),
        wall: bridge.clock.now(),
    }
}

/// The CONNACK of a new session (Perch keeps no session state between connections).
pub(crate) fn connack(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: false,
        code,
    })
}

/// Records `lastErrorTime` / `lastErrorStatus` on a device at the next activity flush: one
/// registry write per device per flush interval, however often it fails (a refused CONNECT
/// costs no write of its own).
pub(crate) fn record_error(
    bridge: &Inner,
    identity: &DeviceIdentity,
    code: ErrorCode,
    message: String,
) {
    bridge.activity.error(
        &identity.registry,
        identity.num_id,
        bridge.clock.now(),
        code,
        message,
    );
}

/// CONNECT → identity, or a CONNACK return code with a reason for the log.
async fn handshake(
    bridge: &Arc<Inner>,
    connect: &Connect,
) -> Result<(Session, mpsc::Receiver<Control>), (ConnectReturnCode, String)> {
    let name = DeviceName::parse("client_id", &connect.client_id).map_err(|_| {
        (
            Refusal::ClientId.code(),
            "the client id is not projects/P/locations/L/registries/R/devices/D".to_owned(),
        )
    })?;
    let password = match &connect.password {
        Some(p) if !p.is_empty() => std::str::from_utf8(p).map_err(|_| {
            (
                Refusal::NoPassword.code(),
                "the password is not UTF-8".to_owned(),
            )
        })?,
        _ => {
            return Err((
                Refusal::NoPassword.code(),
                "no password (a JWT) was given".to_owned(),
            ));
        }
    };
    let registry = bridge
        .registry
        .get_registry(&name.registry)
        .await
        .map_err(|e| (Refusal::NotAuthorized.code(), e.to_string()))?;
    let device = bridge
        .registry
        .get_device(&name)
        .await
        .map_err(|e| (Refusal::NotAuthorized.code(), e.to_string()))?;
    let identity = DeviceIdentity {
        registry: name.registry.clone(),
        device_id: device.id.clone(),
        num_id: device.num_id,
    };
    let refuse = |message: String| {
        record_error(
            bridge,
            &identity,
            ErrorCode::PermissionDenied,
            message.clone(),
        );
        (Refusal::NotAuthorized.code(), message)
    };
    if let Some(why) = closed_to(&registry, &device) {
        return Err(refuse(why));
    }
    let now = bridge.clock.now();
    let token = verify_device_jwt(password, &name.registry.project, &device.credentials, now)
        .map_err(|e| {
            let message = format!("mqtt: {e}");
            record_error(
                bridge,
                &identity,
                ErrorCode::Unauthenticated,
                message.clone(),
            );
            (Refusal::Token(&e).code(), message)
        })?;
    let credential = device
        .credentials
        .get(token.credential_index)
        .map(|c| c.key.clone())
        .unwrap_or_default();
    let (tx, rx) = mpsc::channel(CONTROL_CHANNEL_CAPACITY);
    let tx_for_session = tx.clone();
    let conn_id = bridge
        .sessions
        .register(device.num_id, name.registry.clone(), tx);
    // The token stops being valid at exp + skew; so does the connection.
    let token_ends = token.expires_at + JWT_CLOCK_SKEW;
    let until_expiry = (token_ends - now).to_std().unwrap_or(Duration::ZERO);
    let keep_alive = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let handshake = Handshake {
        identity,
        conn_id,
        tx: tx_for_session,
        registry,
        device,
        credential,
        keep_alive,
        token_expiry: Instant::now() + until_expiry,
    };
    let session = Session::new(
        &bridge.options,
        bridge.sessions.clone(),
        handshake,
        Instant::now(),
    );
    Ok((session, rx))
}

/// Why a known device may not connect over MQTT now, if it may not.
fn closed_to(registry: &Registry, device: &Device) -> Option<String> {
    if !registry.mqtt_state.is_enabled() {
        return Some(format!(
            "mqtt: MQTT is disabled for registry `{}`",
            registry.id
        ));
    }
    if device.blocked {
        return Some(format!("mqtt: device `{}` is blocked", device.id));
    }
    None
}
