//! One MQTT connection: the socket with its buffers, the outbound queue and the write deadline,
//! and the handshake (CONNECT → JWT → CONNACK).
//!
//! This module owns the socket and the handshake; it ends in a `Session` (`session.rs`) that
//! knows its identity, so nothing after re-derives identity from strings (STYLE.md P3).
//!
//! Invariants: a session never awaits a socket write. It queues packets (`Wire::queue`), at most
//! `BridgeOptions::outbound_queue_max_bytes` of them, and `Wire::pump` writes them while it waits
//! for input; output that makes no progress for `BridgeOptions::write_timeout` is a deadline of
//! the session. So a device that stops reading can neither block its session (revocations,
//! commands) nor grow server memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use perch_core::{DeviceName, ErrorCode};
use perch_registry::auth::{JWT_CLOCK_SKEW, verify_device_jwt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::bridge::Inner;
use crate::mqtt::close::CloseReason;
use crate::mqtt::codec::{self, ConnAck, Connect, ConnectReturnCode, Packet};
use crate::mqtt::refusal::Refusal;
use crate::mqtt::session::Session;
use crate::router::DeviceIdentity;
use crate::sessions::{CONTROL_CHANNEL_CAPACITY, Control};

/// Largest packet accepted before CONNECT succeeded.
const CONNECT_MAX_PACKET_BYTES: usize = 64 * 1024;
/// Bytes read from the socket per call.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// An emptied outbound buffer bigger than this is released rather than kept for reuse.
const OUTBOUND_KEEP_BYTES: usize = 64 * 1024;
/// When a session ends, output it queued (a PUBACK, a SUBACK) gets this long to reach a device
/// that reads; a stuck one is not waited for longer.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

/// The socket half of a connection: buffered reads, and queued writes with a deadline.
pub(crate) struct Wire<S> {
    reader: ReadHalf<S>,
    writer: WriteHalf<S>,
    inbound: BytesMut,
    /// Encoded packets not yet accepted by the socket.
    outbound: BytesMut,
    /// Bytes were handed to the socket but not flushed yet (TLS buffers them).
    unflushed: bool,
    /// Bytes ever queued and ever written: a packet queued to end at offset N is written once
    /// `written >= N`.
    queued: u64,
    written: u64,
    /// While output waits: when the socket last accepted some of it.
    progress_at: Option<Instant>,
    max_packet_bytes: usize,
    outbound_max_bytes: usize,
    write_timeout: Duration,
}

pub(crate) enum Read {
    Packet(Packet),
    Eof,
    Invalid(codec::DecodeError),
}

/// What `Wire::pump` did.
pub(crate) enum Pumped {
    /// Read this many bytes (0: the peer closed).
    Read(usize),
    /// Wrote queued output (`Wire::written` moved on).
    Wrote,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    fn new(
        stream: S,
        max_packet_bytes: usize,
        outbound_max_bytes: usize,
        write_timeout: Duration,
    ) -> Wire<S> {
        let (reader, writer) = tokio::io::split(stream);
        Wire {
            reader,
            writer,
            inbound: BytesMut::with_capacity(READ_CHUNK_BYTES),
            outbound: BytesMut::with_capacity(1024),
            unflushed: false,
            queued: 0,
            written: 0,
            progress_at: None,
            max_packet_bytes,
            outbound_max_bytes,
            write_timeout,
        }
    }

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
        self.reader.read_buf(&mut self.inbound).await
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

    /// Queues a packet for `pump` to write; returns the offset at which it is written. Refused
    /// (with why, to close the connection) when the device has left
    /// `BridgeOptions::outbound_queue_max_bytes` unread; one packet is always accepted.
    pub(crate) fn queue(&mut self, packet: &Packet) -> Result<u64, CloseReason> {
        let before = self.outbound.len();
        codec::encode(packet, &mut self.outbound);
        if before > 0 && self.outbound.len() > self.outbound_max_bytes {
            self.outbound.truncate(before);
            return Err(CloseReason::OutboundFull {
                queued: before,
                limit: self.outbound_max_bytes,
            });
        }
        if self.progress_at.is_none() {
            self.progress_at = Some(Instant::now());
        }
        self.queued += (self.outbound.len() - before) as u64;
        Ok(self.queued)
    }

    /// Bytes the socket has accepted so far (compare with `queue`'s offsets).
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    fn has_output(&self) -> bool {
        !self.outbound.is_empty() || self.unflushed
    }

    /// When waiting output that made no progress counts as a dead device, if any waits.
    pub(crate) fn write_deadline(&self) -> Option<Instant> {
        self.progress_at
            .filter(|_| self.has_output())
            .map(|at| at + self.write_timeout)
    }

    /// Writes queued output while waiting for input; returns after a read or a write.
    /// Cancel-safe: partial progress is kept in `self`.
    pub(crate) async fn pump(&mut self) -> std::io::Result<Pumped> {
        if !self.has_output() {
            return self.fill().await.map(Pumped::Read);
        }
        self.inbound.reserve(READ_CHUNK_BYTES);
        let wrote = tokio::select! {
            n = self.reader.read_buf(&mut self.inbound) => return n.map(Pumped::Read),
            w = write_some(&mut self.writer, &mut self.outbound, &mut self.unflushed) => w?,
        };
        self.written += wrote as u64;
        self.progress_at = self.has_output().then(Instant::now);
        if self.outbound.is_empty() && self.outbound.capacity() > OUTBOUND_KEEP_BYTES {
            self.outbound = BytesMut::new();
        }
        Ok(Pumped::Wrote)
    }

    /// Writes everything queued, within the write timeout (the handshake and bootstrap, which
    /// have nothing else to wait for).
    async fn flush_all(&mut self) -> std::io::Result<()> {
        let timeout = self.write_timeout;
        let all = async {
            while self.has_output() {
                let n =
                    write_some(&mut self.writer, &mut self.outbound, &mut self.unflushed).await?;
                self.written += n as u64;
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, all).await {
            Ok(r) => {
                self.progress_at = None;
                r
            }
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Writes what is still queued, for at most `CLOSE_FLUSH_TIMEOUT`; errors are moot then.
    async fn flush_before_close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, self.flush_all()).await;
    }

    /// Queues a packet and writes it out, within the write timeout.
    pub(crate) async fn send(&mut self, packet: &Packet) -> std::io::Result<()> {
        self.queue(packet)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
        self.flush_all().await
    }
}

/// One step of writing: some queued bytes, or the flush once none are left. Returns the bytes
/// the socket accepted; cancel-safe.
async fn write_some<W: AsyncWrite + Unpin>(
    writer: &mut W,
    outbound: &mut BytesMut,
    unflushed: &mut bool,
) -> std::io::Result<usize> {
    if outbound.is_empty() {
        writer.flush().await?;
        *unflushed = false;
        return Ok(0);
    }
    let n = writer.write_buf(outbound).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    *unflushed = true;
    Ok(n)
}

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
    let (session, rx) = match handshake(&bridge, &connect).await {
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
        session.end(&bridge);
        return;
    }
    wire.max_packet_bytes = bridge.options.max_packet_bytes;
    tracing::debug!(%peer, device = %session.identity().device_id, "device connected");
    let identity = session.identity().clone();
    metrics::counter!("perch_mqtt_connects_total", "result" => "accepted").increment(1);
    let live = metrics::gauge!("perch_mqtt_sessions");
    live.increment(1.0);
    let reason = session.run(&bridge, &mut wire, rx).await;
    wire.flush_before_close().await;
    live.decrement(1.0);
    if let Some((code, message)) = reason.status() {
        tracing::debug!(%peer, device = %identity.device_id, code = %code, reason = %message, "device disconnected");
        record_error(&bridge, &identity, code, message);
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
    if !registry.mqtt_state.is_enabled() {
        return Err(refuse(format!(
            "mqtt: MQTT is disabled for registry `{}`",
            registry.id
        )));
    }
    if device.blocked {
        return Err(refuse(format!("mqtt: device `{}` is blocked", device.id)));
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
    let session = Session::new(
        &bridge.options,
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::mqtt::codec::{Publish, QoS};

    fn publish(payload_bytes: usize) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "/devices/d/commands".into(),
            packet_id: None,
            payload: Bytes::from(vec![b'x'; payload_bytes]),
        })
    }

    /// A peer that never reads: the queue is capped, the deadline set, and reading drains it.
    #[tokio::test]
    async fn output_a_peer_does_not_read_is_capped_and_has_a_deadline() {
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut wire = Wire::new(ours, 1 << 20, 10_000, Duration::from_secs(5));
        assert!(wire.write_deadline().is_none());
        let Ok(first) = wire.queue(&publish(6_000)) else {
            panic!("one packet always fits");
        };
        // A packet bigger than the cap is accepted when nothing waits.
        assert!(first > 6_000);
        assert!(wire.queue(&publish(6_000)).is_err(), "over the cap");
        let deadline = wire.write_deadline().expect("output waits");
        // The socket takes 1 KiB, then nothing: progress moves the deadline, then it stands.
        while let Ok(Ok(Pumped::Wrote)) =
            tokio::time::timeout(Duration::from_millis(10), wire.pump()).await
        {}
        assert_eq!(wire.written(), 1024);
        assert!(wire.written() < first);
        assert!(wire.write_deadline().expect("still waiting") >= deadline);
        // Once the peer reads, everything goes out and the deadline is gone.
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let _ = peer.read_to_end(&mut all).await;
            all.len()
        });
        while wire.written() < first {
            assert!(matches!(wire.pump().await, Ok(Pumped::Wrote)));
        }
        assert!(matches!(wire.pump().await, Ok(Pumped::Wrote))); // the flush
        assert!(wire.write_deadline().is_none());
        drop(wire);
        assert_eq!(reader.await.ok(), Some(first as usize));
    }
}
