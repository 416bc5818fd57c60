//! One MQTT connection: handshake (CONNECT → JWT → CONNACK), then the session loop — topic
//! ACL, telemetry with a PUBACK only once durable, state, config and command delivery,
//! keep-alive, idle and JWT-expiry deadlines, and revocation through the session map.
//!
//! The handshake ends in a `Session` that knows its identity; nothing after re-derives identity
//! from strings (STYLE.md P3). Any protocol or ACL violation closes the connection and records
//! `lastErrorStatus` on the device, as IoT Core did.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use perch_core::model::{Device, DeviceConfig, DeviceState, ErrorStatus, Registry};
use perch_core::{DeviceName, DeviceRef, ErrorCode, Rejection};
use perch_registry::auth::{JWT_CLOCK_SKEW, verify_device_jwt};
use perch_store::log::NewMessage;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::bridge::Inner;
use crate::mqtt::codec::{self, ConnAck, Connect, Packet, Publish, QoS, SubAck, Subscribe};
use crate::mqtt::topic::{self, PublishTopic, SubscribeTopic};
use crate::router::{self, DeviceIdentity};
use crate::sessions::{CONTROL_CHANNEL_CAPACITY, Control};

/// Bytes read from the socket per call.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Why a session ended, for the device's `lastErrorStatus` (None: the client left cleanly).
struct Closing(Option<(ErrorCode, String)>);

impl Closing {
    fn clean() -> Closing {
        Closing(None)
    }
    fn error(code: ErrorCode, message: impl Into<String>) -> Closing {
        Closing(Some((code, message.into())))
    }
}

/// The socket half of a connection: buffered reads and packet writes.
struct Wire<S> {
    stream: S,
    inbound: BytesMut,
    outbound: BytesMut,
    max_packet_bytes: usize,
}

enum Read {
    Packet(Packet),
    Eof,
    Invalid(codec::DecodeError),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// The next complete packet already buffered, if any.
    fn buffered(&mut self) -> Option<Read> {
        match codec::decode(&mut self.inbound, self.max_packet_bytes) {
            Ok(Some(p)) => Some(Read::Packet(p)),
            Ok(None) => None,
            Err(e) => Some(Read::Invalid(e)),
        }
    }

    /// Reads more bytes; cancel-safe (bytes land in `inbound` only when a read completes).
    async fn fill(&mut self) -> std::io::Result<usize> {
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

    async fn send(&mut self, packet: &Packet) -> std::io::Result<()> {
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
        max_packet_bytes: bridge.options.max_packet_bytes,
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
    let (session, rx) = match handshake(&bridge, &connect).await {
        Ok(s) => s,
        Err((code, reason)) => {
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
        bridge
            .sessions
            .unregister(session.identity.num_id, session.conn_id);
        return;
    }
    tracing::debug!(%peer, device = %session.identity.device_id, "device connected");
    let identity = session.identity.clone();
    let conn_id = session.conn_id;
    let closing = session.run(&bridge, &mut wire, rx).await;
    bridge.sessions.unregister(identity.num_id, conn_id);
    if let Closing(Some((code, message))) = closing {
        tracing::debug!(%peer, device = %identity.device_id, code = %code, reason = %message, "device disconnected");
        record_error(&bridge, &identity, code, message).await;
    }
}

/// Records `lastErrorTime` / `lastErrorStatus` on a device.
async fn record_error(bridge: &Inner, identity: &DeviceIdentity, code: ErrorCode, message: String) {
    let now = Utc::now();
    let update = Box::new(move |d: &mut Device| {
        d.last_error_time = Some(now);
        d.last_error_status = Some(ErrorStatus {
            code: code.grpc_code(),
            message,
        });
    });
    let _ = bridge
        .registry
        .record_device_activity(
            &identity.registry,
            &DeviceRef::NumId(identity.num_id),
            update,
        )
        .await;
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
    let conn_id = bridge
        .sessions
        .register(device.num_id, name.registry.clone(), tx);
    // The token stops being valid at exp + skew; so does the connection.
    let token_ends = token.expires_at + JWT_CLOCK_SKEW;
    let until_expiry = (token_ends - now).to_std().unwrap_or(Duration::ZERO);
    let keep_alive = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    Ok((
        Session {
            identity,
            conn_id,
            registry,
            credential,
            config: device.config.clone(),
            config_qos: None,
            config_inflight: None,
            commands: None,
            next_packet_id: 0,
            inflight_commands: HashMap::new(),
            keep_alive,
            token_expiry: Instant::now() + until_expiry,
            started: Instant::now(),
            last_inbound: Instant::now(),
        },
        rx,
    ))
}

/// An authenticated device's session.
struct Session {
    identity: DeviceIdentity,
    conn_id: u64,
    registry: Registry,
    /// The credential (PEM) the device authenticated with: removing it revokes the session.
    credential: String,
    /// The newest config known; pushed on subscribe and on change.
    config: DeviceConfig,
    config_qos: Option<QoS>,
    /// (packet id, version, sent at) of a QoS 1 config awaiting its PUBACK.
    config_inflight: Option<(u16, i64, Instant)>,
    /// Granted QoS and filters (None = `commands/#`) of the commands subscription.
    commands: Option<(QoS, Vec<Option<String>>)>,
    next_packet_id: u16,
    inflight_commands: HashMap<u16, ()>,
    keep_alive: Option<Duration>,
    token_expiry: Instant,
    started: Instant,
    last_inbound: Instant,
}

impl Session {
    fn deadline(&self, options: &crate::BridgeOptions) -> (Instant, &'static str) {
        let mut deadline = (self.last_inbound + options.idle_timeout, "idle");
        if let Some(k) = self.keep_alive {
            deadline = deadline.min((self.last_inbound + k, "keepalive"));
        }
        deadline = deadline.min((self.token_expiry, "token"));
        deadline = deadline.min((self.started + options.max_connection_age, "age"));
        if let Some((_, _, sent)) = self.config_inflight {
            deadline = deadline.min((sent + options.config_resend_interval, "config"));
        }
        deadline
    }

    fn packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            let id = self.next_packet_id;
            let busy = id == 0
                || self.inflight_commands.contains_key(&id)
                || self.config_inflight.is_some_and(|(p, _, _)| p == id);
            if !busy {
                return id;
            }
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        mut rx: mpsc::Receiver<Control>,
    ) -> Closing {
        let mut shutdown = bridge.shutdown.clone();
        loop {
            // Everything already buffered first (e.g. SUBSCRIBEs pipelined behind CONNECT).
            while let Some(read) = wire.buffered() {
                if let Some(closing) = self.on_read(bridge, wire, read).await {
                    return closing;
                }
            }
            let (deadline, why) = self.deadline(&bridge.options);
            tokio::select! {
                n = wire.fill() => match n {
                    Ok(0) | Err(_) => return Closing::clean(),
                    Ok(_) => {}
                },
                control = rx.recv() => match control {
                    Some(c) => if let Some(closing) = self.on_control(bridge, wire, c).await { return closing },
                    None => return Closing::clean(),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    match why {
                        "config" => {
                            if let Err(closing) = self.send_config(bridge, wire, true).await { return closing; }
                        }
                        "token" => return Closing::error(ErrorCode::Unauthenticated, "mqtt: SERVER: The authorization token expired."),
                        "keepalive" => return Closing::error(ErrorCode::DeadlineExceeded, "mqtt: SERVER: The connection timed out: no packet within 1.5 times the keep-alive."),
                        "age" => return Closing::error(ErrorCode::Unavailable, "mqtt: SERVER: The connection reached its maximum age."),
                        _ => return Closing::error(ErrorCode::DeadlineExceeded, "mqtt: SERVER: The connection was idle for too long."),
                    }
                }
                _ = crate::bridge::stopped(&mut shutdown) => {
                    return Closing::error(ErrorCode::Unavailable, "mqtt: SERVER: The connection is closed because the server is shutting down.");
                }
            }
        }
    }

    async fn on_read<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        read: Read,
    ) -> Option<Closing> {
        let packet = match read {
            Read::Packet(p) => p,
            Read::Eof => return Some(Closing::clean()),
            Read::Invalid(e) => {
                return Some(Closing::error(
                    ErrorCode::InvalidArgument,
                    format!("mqtt: {e}"),
                ));
            }
        };
        self.last_inbound = Instant::now();
        let result = match packet {
            Packet::Publish(p) => self.on_publish(bridge, wire, p).await,
            Packet::Subscribe(s) => self.on_subscribe(bridge, wire, s).await,
            Packet::Unsubscribe(u) => {
                for f in &u.filters {
                    match topic::parse_subscribe(f) {
                        Some(SubscribeTopic::Config { .. }) => self.config_qos = None,
                        Some(SubscribeTopic::Commands { .. }) => self.commands = None,
                        _ => {}
                    }
                }
                wire.send(&Packet::UnsubAck(u.packet_id))
                    .await
                    .map_err(|_| Closing::clean())
            }
            Packet::PubAck(id) => {
                self.on_puback(bridge, id).await;
                Ok(())
            }
            Packet::PingReq => {
                bridge.activity.heartbeat(
                    &self.identity.registry,
                    self.identity.num_id,
                    Utc::now(),
                );
                wire.send(&Packet::PingResp)
                    .await
                    .map_err(|_| Closing::clean())
            }
            Packet::Disconnect => Err(Closing::clean()),
            Packet::Connect(_) => Err(Closing::error(
                ErrorCode::InvalidArgument,
                "mqtt: [MQTT-3.1.0-2] a second CONNECT is a protocol violation",
            )),
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => Err(Closing::error(
                ErrorCode::InvalidArgument,
                "mqtt: QoS 2 is not supported",
            )),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Closing::error(
                    ErrorCode::InvalidArgument,
                    "mqtt: a client may not send server packets",
                ))
            }
        };
        result.err()
    }

    /// Whether `device` (a topic's device id) is this session's own device.
    fn is_own(&self, device: &str) -> bool {
        device == self.identity.device_id.as_str()
    }

    async fn on_publish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        p: Publish,
    ) -> Result<(), Closing> {
        if p.qos == QoS::ExactlyOnce {
            return Err(Closing::error(
                ErrorCode::InvalidArgument,
                "mqtt: QoS 2 publishes are not supported",
            ));
        }
        let parsed = topic::parse_publish(&p.topic);
        match parsed {
            Some(PublishTopic::Events { device, subfolder }) if self.is_own(device) => {
                if p.payload.len() > bridge.options.telemetry_max_bytes {
                    return Err(Closing::error(
                        ErrorCode::InvalidArgument,
                        format!(
                            "mqtt: the telemetry payload has {} bytes; the limit is {}",
                            p.payload.len(),
                            bridge.options.telemetry_max_bytes
                        ),
                    ));
                }
                let Some(topic) =
                    router::route(&self.registry.event_notification_configs, subfolder)
                else {
                    return Err(Closing::error(
                        ErrorCode::FailedPrecondition,
                        format!(
                            "mqtt: registry `{}` has no event notification config for subfolder '{subfolder}'",
                            self.registry.id
                        ),
                    ));
                };
                let message = NewMessage {
                    data: p.payload.clone(),
                    attributes: router::trusted_attributes(&self.identity, subfolder),
                    ordering_key: String::new(),
                };
                if let Err(e) = bridge.pubsub.publish(topic, vec![message]).await {
                    return Err(Closing::error(
                        e.code(),
                        format!("mqtt: the telemetry could not be published to `{topic}`: {e}"),
                    ));
                }
                bridge
                    .activity
                    .event(&self.identity.registry, self.identity.num_id, Utc::now());
                self.ack(wire, &p).await
            }
            Some(PublishTopic::State { device }) if self.is_own(device) => {
                if p.payload.len() > bridge.options.state_max_bytes {
                    return Err(Closing::error(
                        ErrorCode::InvalidArgument,
                        format!(
                            "mqtt: the state payload has {} bytes; the limit is {}",
                            p.payload.len(),
                            bridge.options.state_max_bytes
                        ),
                    ));
                }
                store_state(bridge, &self.identity, &self.registry, p.payload.clone())
                    .await
                    .map_err(|e| Closing::error(e.code, format!("mqtt: {}", e.message)))?;
                self.ack(wire, &p).await
            }
            Some(PublishTopic::Attach { .. }) | Some(PublishTopic::Detach { .. }) => {
                Err(Closing::error(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "mqtt: device `{}` may not attach devices (gateways are not supported yet)",
                        self.identity.device_id
                    ),
                ))
            }
            _ => Err(Closing::error(
                ErrorCode::PermissionDenied,
                format!(
                    "mqtt: device `{}` may not publish to '{}'",
                    self.identity.device_id, p.topic
                ),
            )),
        }
    }

    async fn ack<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        wire: &mut Wire<S>,
        p: &Publish,
    ) -> Result<(), Closing> {
        if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
            wire.send(&Packet::PubAck(id))
                .await
                .map_err(|_| Closing::clean())?;
        }
        Ok(())
    }

    async fn on_subscribe<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        s: Subscribe,
    ) -> Result<(), Closing> {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut send_config = false;
        for (filter, qos) in &s.filters {
            let granted = (*qos).min(QoS::AtLeastOnce);
            match topic::parse_subscribe(filter) {
                Some(SubscribeTopic::Config { device }) if self.is_own(device) => {
                    self.config_qos = Some(granted);
                    send_config = true;
                    codes.push(granted as u8);
                }
                Some(SubscribeTopic::Commands { device, subfolder }) if self.is_own(device) => {
                    let entry = self.commands.get_or_insert((granted, Vec::new()));
                    entry.0 = entry.0.max(granted);
                    entry.1.push(subfolder.map(str::to_owned));
                    codes.push(granted as u8);
                }
                Some(SubscribeTopic::Errors { device }) if self.is_own(device) => {
                    codes.push(QoS::AtMostOnce as u8)
                }
                _ if bridge.options.subscribe_failure_suback => codes.push(0x80),
                _ => {
                    return Err(Closing::error(
                        ErrorCode::PermissionDenied,
                        format!(
                            "mqtt: device `{}` may not subscribe to '{filter}'",
                            self.identity.device_id
                        ),
                    ));
                }
            }
        }
        wire.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            return_codes: codes,
        }))
        .await
        .map_err(|_| Closing::clean())?;
        if send_config {
            // The latest config goes out right after the SUBACK, even when empty (SPEC.md §4.7).
            self.send_config(bridge, wire, false).await?;
        }
        Ok(())
    }

    async fn send_config<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        dup: bool,
    ) -> Result<(), Closing> {
        let Some(qos) = self.config_qos else {
            self.config_inflight = None;
            return Ok(());
        };
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ => Some(match (dup, self.config_inflight) {
                (true, Some((id, v, _))) if v == self.config.version => id,
                _ => self.packet_id(),
            }),
        };
        let publish = Publish {
            dup: dup && packet_id.is_some(),
            qos,
            retain: false,
            topic: format!("/devices/{}/config", self.identity.device_id),
            packet_id,
            payload: Bytes::from(self.config.binary_data.clone()),
        };
        wire.send(&Packet::Publish(publish))
            .await
            .map_err(|_| Closing::clean())?;
        self.config_inflight = packet_id.map(|id| (id, self.config.version, Instant::now()));
        let now = Utc::now();
        let update = Box::new(move |d: &mut Device| d.last_config_send_time = Some(now));
        let _ = bridge
            .registry
            .record_device_activity(
                &self.identity.registry,
                &DeviceRef::NumId(self.identity.num_id),
                update,
            )
            .await;
        Ok(())
    }

    async fn on_puback(&mut self, bridge: &Inner, id: u16) {
        if self.inflight_commands.remove(&id).is_some() {
            return;
        }
        if let Some((pid, version, _)) = self.config_inflight
            && pid == id
        {
            self.config_inflight = None;
            let now = Utc::now();
            let update = Box::new(move |d: &mut Device| {
                if d.config.version == version {
                    d.config.device_ack_time = Some(now);
                }
                d.last_config_ack_time = Some(now);
            });
            let _ = bridge
                .registry
                .record_device_activity(
                    &self.identity.registry,
                    &DeviceRef::NumId(self.identity.num_id),
                    update,
                )
                .await;
        }
    }

    async fn on_control<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        control: Control,
    ) -> Option<Closing> {
        match control {
            Control::Kick { code, message } => {
                Some(Closing::error(code, format!("mqtt: {message}")))
            }
            Control::DeviceChanged(device) => {
                if device.blocked {
                    return Some(Closing::error(
                        ErrorCode::PermissionDenied,
                        "mqtt: SERVER: The device was blocked.",
                    ));
                }
                let now = Utc::now();
                let still_valid = device
                    .credentials
                    .iter()
                    .any(|c| c.key == self.credential && !c.is_expired_at(now));
                if !still_valid {
                    return Some(Closing::error(
                        ErrorCode::Unauthenticated,
                        "mqtt: SERVER: The credential the device connected with was removed.",
                    ));
                }
                None
            }
            Control::RegistryChanged(registry) => {
                if !registry.mqtt_state.is_enabled() {
                    return Some(Closing::error(
                        ErrorCode::PermissionDenied,
                        "mqtt: SERVER: MQTT was disabled for the registry.",
                    ));
                }
                self.registry = *registry;
                None
            }
            Control::Config(config) => {
                if config.version > self.config.version {
                    self.config = config;
                    if let Err(closing) = self.send_config(bridge, wire, false).await {
                        return Some(closing);
                    }
                }
                None
            }
            Control::Command {
                subfolder,
                data,
                reply,
            } => {
                let qos = self.commands.as_ref().and_then(|(qos, filters)| {
                    filters
                        .iter()
                        .any(|f| f.as_deref().is_none_or(|f| f == subfolder))
                        .then_some(*qos)
                });
                let Some(qos) = qos else {
                    let _ = reply.send(Err(Rejection::failed_precondition(format!(
                        "Device `{}` is not subscribed to the commands topic.",
                        self.identity.device_id
                    ))));
                    return None;
                };
                let packet_id = (qos == QoS::AtLeastOnce).then(|| self.packet_id());
                if let Some(id) = packet_id {
                    self.inflight_commands.insert(id, ());
                }
                let topic = if subfolder.is_empty() {
                    format!("/devices/{}/commands", self.identity.device_id)
                } else {
                    format!("/devices/{}/commands/{subfolder}", self.identity.device_id)
                };
                let publish = Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic,
                    packet_id,
                    payload: data,
                };
                let sent = wire.send(&Packet::Publish(publish)).await;
                let _ = reply.send(sent.map_err(|_| {
                    Rejection::new(
                        ErrorCode::Unavailable,
                        "the device connection closed while sending the command",
                    )
                }));
                None
            }
        }
    }
}

/// Stores a state report (always) and notifies the state topic (best effort, SPEC.md §4.6).
pub(crate) async fn store_state(
    bridge: &Inner,
    identity: &DeviceIdentity,
    registry: &Registry,
    data: Bytes,
) -> Result<(), Rejection> {
    let now = Utc::now();
    let stored = data.to_vec();
    let update = Box::new(move |d: &mut Device| {
        // Two reports within one clock tick must still be distinct history entries.
        let at = match &d.state {
            Some(s) if s.update_time >= now => s.update_time + chrono::Duration::microseconds(1),
            _ => now,
        };
        d.state = Some(DeviceState {
            update_time: at,
            binary_data: stored,
        });
        d.last_state_time = Some(at);
    });
    bridge
        .registry
        .record_device_activity(
            &identity.registry,
            &DeviceRef::NumId(identity.num_id),
            update,
        )
        .await
        .map_err(|e| Rejection::new(e.code(), e.to_string()))?;
    if !registry.state_notification_topic.is_empty() {
        let message = NewMessage {
            data,
            attributes: router::trusted_attributes(identity, ""),
            ordering_key: String::new(),
        };
        if let Err(e) = bridge
            .pubsub
            .publish(&registry.state_notification_topic, vec![message])
            .await
        {
            tracing::debug!(device = %identity.device_id, error = %e, "state notification skipped");
        }
    }
    Ok(())
}
