//! One MQTT connection: buffered packet I/O and the handshake (CONNECT → JWT → CONNACK).
//!
//! This module owns the socket and the handshake; it ends in a `Session` (`session.rs`) that
//! knows its identity, so nothing after re-derives identity from strings (STYLE.md P3).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use chrono::Utc;
use perch_core::model::{Device, ErrorStatus};
use perch_core::{DeviceName, ErrorCode};
use perch_registry::auth::{JWT_CLOCK_SKEW, verify_device_jwt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::bridge::Inner;
use crate::mqtt::codec::{self, ConnAck, Connect, Packet};
use crate::mqtt::session::Session;
use crate::router::DeviceIdentity;
use crate::sessions::{CONTROL_CHANNEL_CAPACITY, Control};

/// Largest packet accepted before CONNECT succeeded.
const CONNECT_MAX_PACKET_BYTES: usize = 64 * 1024;
/// Bytes read from the socket per call.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Why a session ended, for the device's `lastErrorStatus` (None: the client left cleanly).
pub(crate) struct Closing(pub(crate) Option<(ErrorCode, String)>);

impl Closing {
    pub(crate) fn clean() -> Closing {
        Closing(None)
    }
    pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> Closing {
        Closing(Some((code, message.into())))
    }
}

/// The socket half of a connection: buffered reads and packet writes.
pub(crate) struct Wire<S> {
    stream: S,
    inbound: BytesMut,
    outbound: BytesMut,
    max_packet_bytes: usize,
}

pub(crate) enum Read {
    Packet(Packet),
    Eof,
    Invalid(codec::DecodeError),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// The next complete packet already buffered, if any.
    pub(crate) fn buffered(&mut self) -> Option<Read> {
        match codec::decode(&mut self.inbound, self.max_packet_bytes) {
            Ok(Some(p)) => Some(Read::Packet(p)),
            Ok(None) => None,
            Err(e) => Some(Read::Invalid(e)),
        }
    }

    /// Reads more bytes; cancel-safe (bytes land in `inbound` only when a read completes).
    pub(crate) async fn fill(&mut self) -> std::io::Result<usize> {
        self.inbound.reserve(READ_CHUNK_BYTES);
        self.stream.read_buf(&mut self.inbound).await
    }

    async fn read(&mut self) -> Read {
        loop {
            if let Some(r) = self.buffered() {
                return r;
            }
            match self.fill().await {
                Ok(0) | Err(_) => return Read::Eof,
                Ok(_) => {}
            }
        }
    }

    pub(crate) async fn send(&mut self, packet: &Packet) -> std::io::Result<()> {
        codec::encode(packet, &mut self.outbound);
        let out = self.outbound.split();
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }
}

/// Serves one connection to its end.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
    bridge: Arc<Inner>,
    stream: S,
    peer: SocketAddr,
) {
    let mut wire = Wire {
        stream,
        inbound: BytesMut::with_capacity(READ_CHUNK_BYTES),
        outbound: BytesMut::with_capacity(1024),
        // A CONNECT with a JWT is a few KB: nobody buffers telemetry-sized packets unauthenticated.
        max_packet_bytes: CONNECT_MAX_PACKET_BYTES.min(bridge.options.max_packet_bytes),
    };
    let connect = match tokio::time::timeout(bridge.options.connect_timeout, wire.read()).await {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time; closing");
            return;
        }
        Ok(Read::Eof) => return,
        Ok(Read::Invalid(e)) => {
            tracing::debug!(%peer, error = %e, "invalid first packet");
            if let Some(code) = e.connack_code() {
                let _ = wire
                    .send(&Packet::ConnAck(ConnAck {
                        session_present: false,
                        code,
                    }))
                    .await;
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
    let (session, rx) = match handshake(&bridge, &connect).await {
        Ok(s) => s,
        Err((code, reason)) => {
            metrics::counter!("perch_mqtt_connects_total", "result" => "refused").increment(1);
            tracing::debug!(%peer, client_id = %connect.client_id, code, reason, "connection refused");
            let _ = wire
                .send(&Packet::ConnAck(ConnAck {
                    session_present: false,
                    code,
                }))
                .await;
            return;
        }
    };
    if wire
        .send(&Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0,
        }))
        .await
        .is_err()
    {
        session.end(&bridge);
        return;
    }
    wire.max_packet_bytes = bridge.options.max_packet_bytes;
    tracing::debug!(%peer, device = %session.identity().device_id, "device connected");
    let identity = session.identity().clone();
    metrics::counter!("perch_mqtt_connects_total", "result" => "accepted").increment(1);
    let live = metrics::gauge!("perch_mqtt_sessions");
    live.increment(1.0);
    let closing = session.run(&bridge, &mut wire, rx).await;
    live.decrement(1.0);
    if let Closing(Some((code, message))) = closing {
        tracing::debug!(%peer, device = %identity.device_id, code = %code, reason = %message, "device disconnected");
        record_error(&bridge, &identity, code, message).await;
    }
}

/// Records `lastErrorTime` / `lastErrorStatus` on a device.
pub(crate) async fn record_error(
    bridge: &Inner,
    identity: &DeviceIdentity,
    code: ErrorCode,
    message: String,
) {
    let now = Utc::now();
    let update = Box::new(move |d: &mut Device| {
        d.last_error_time = Some(now);
        d.last_error_status = Some(ErrorStatus {
            code: code.grpc_code(),
            message,
        });
    });
    let _ = bridge.record(identity, update).await;
}

/// CONNECT → identity, or a CONNACK return code with a reason for the log.
async fn handshake(
    bridge: &Arc<Inner>,
    connect: &Connect,
) -> Result<(Session, mpsc::Receiver<Control>), (u8, String)> {
    let name = DeviceName::parse("client_id", &connect.client_id).map_err(|_| {
        (
            2,
            "the client id is not projects/P/locations/L/registries/R/devices/D".to_owned(),
        )
    })?;
    let password = match &connect.password {
        Some(p) if !p.is_empty() => {
            std::str::from_utf8(p).map_err(|_| (4, "the password is not UTF-8".to_owned()))?
        }
        _ => return Err((4, "no password (a JWT) was given".to_owned())),
    };
    let registry = bridge
        .registry
        .get_registry(&name.registry)
        .await
        .map_err(|e| (5, e.to_string()))?;
    let device = bridge
        .registry
        .get_device(&name)
        .await
        .map_err(|e| (5, e.to_string()))?;
    let identity = DeviceIdentity {
        registry: name.registry.clone(),
        device_id: device.id.clone(),
        num_id: device.num_id,
    };
    let refuse = |message: String| {
        let (bridge, identity) = (bridge.clone(), identity.clone());
        let m = message.clone();
        tokio::spawn(async move {
            record_error(&bridge, &identity, ErrorCode::PermissionDenied, m).await
        });
        (5, message)
    };
    if !registry.mqtt_state.is_enabled() {
        return Err(refuse(format!(
            "mqtt: MQTT is disabled for registry `{}`",
            registry.id
        )));
    }
    if device.blocked {
        return Err(refuse(format!("mqtt: device `{}` is blocked", device.id)));
    }
    let now = Utc::now();
    let token = verify_device_jwt(password, &name.registry.project, &device.credentials, now)
        .map_err(|e| {
            let code = e.connack_code();
            let (bridge, identity) = (bridge.clone(), identity.clone());
            let message = format!("mqtt: {e}");
            let m = message.clone();
            tokio::spawn(async move {
                record_error(&bridge, &identity, ErrorCode::Unauthenticated, m).await
            });
            (code, message)
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
    let session = Session::new(
        identity,
        conn_id,
        tx_for_session,
        registry,
        &device,
        credential,
        keep_alive,
        Instant::now() + until_expiry,
    );
    Ok((session, rx))
}
