//! An authenticated MQTT session: the topic ACL, telemetry with a PUBACK only once durable,
//! state, config and command delivery, gateways acting for attached devices, keep-alive, idle
//! and JWT-expiry deadlines, and revocation through the session map.
//!
//! A session speaks for its own device and, when it is a gateway, for each device attached to
//! it; each of those is an `Endpoint` with its own identity, config and command subscriptions.
//! Any protocol or ACL violation closes the connection and records `lastErrorStatus`, as IoT
//! Core did; a failed attach only answers on the gateway's errors topic, and so does an
//! attachment an admin change revoked (unbind, delete, block, credentials).
//!
//! The session never awaits a socket write: it queues packets on the `Wire` and the wire writes
//! them while the session waits for input, so a device that stops reading only hits the
//! write deadline or the outbound cap (`connection.rs`), never stalls revocations or commands.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use perch_core::model::{Device, DeviceConfig, Registry};
use perch_core::{DeviceId, DeviceRef, ErrorCode, Rejection};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::bridge::Inner;
use crate::ingest::{self, Via};
use crate::mqtt::close::CloseReason;
use crate::mqtt::codec::{Packet, Publish, QoS, SubAck, Subscribe};
use crate::mqtt::connection::{Pumped, Read, Wire};
use crate::mqtt::gateway;
use crate::mqtt::quota::{self, CommandFilters};
use crate::mqtt::topic::{self, PublishTopic, SubscribeTopic};
use crate::rate::TokenBucket;
use crate::router::DeviceIdentity;
use crate::sessions::{Control, command_deadline_exceeded};
use crate::state::store_state;

/// A command waiting to answer the admin call: a QoS 1 one for its PUBACK, a QoS 0 one until
/// the socket took it.
struct PendingCommand {
    reply: oneshot::Sender<Result<(), Rejection>>,
    sent: Instant,
}

/// The session's deadlines. When two fall at the same instant the earlier variant wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Age,
    Command,
    Config,
    Idle,
    KeepAlive,
    Token,
    Write,
}

/// One device a session speaks for.
struct Endpoint {
    identity: DeviceIdentity,
    /// The newest config known; pushed on subscribe and on change.
    config: DeviceConfig,
    config_qos: Option<QoS>,
    /// (packet id, version, sent at) of a QoS 1 config awaiting its PUBACK.
    config_inflight: Option<(u16, i64, Instant)>,
    /// Granted QoS and distinct filters (None = `commands/#`) of the commands subscription.
    commands: Option<(QoS, CommandFilters)>,
    /// The session-map registration of an attached device (None for the session's own).
    conn_id: Option<u64>,
    /// The credential (PEM) an attached device's attach JWT was verified with, if it gave one:
    /// removing it detaches the device.
    attach_credential: Option<String>,
    last_state: Option<Instant>,
}

impl Endpoint {
    fn new(identity: DeviceIdentity, config: DeviceConfig, conn_id: Option<u64>) -> Endpoint {
        Endpoint {
            identity,
            config,
            config_qos: None,
            config_inflight: None,
            commands: None,
            conn_id,
            attach_credential: None,
            last_state: None,
        }
    }
}

/// An authenticated device's session.
pub(crate) struct Session {
    own: DeviceIdentity,
    conn_id: u64,
    tx: mpsc::Sender<Control>,
    /// The connecting device as of the handshake (gateway settings, credentials).
    device: Device,
    registry: Registry,
    /// The credential (PEM) the device authenticated with: removing it revokes the session.
    credential: String,
    endpoints: HashMap<DeviceId, Endpoint>,
    errors_subscribed: bool,
    next_packet_id: u16,
    inflight_commands: HashMap<u16, PendingCommand>,
    /// QoS 0 commands queued to end at a `Wire` offset, answered once it is written.
    unwritten_commands: Vec<(u64, PendingCommand)>,
    keep_alive: Option<Duration>,
    token_expiry: Instant,
    started: Instant,
    last_inbound: Instant,
    telemetry: TokenBucket,
    /// SUBSCRIBE and UNSUBSCRIBE packets.
    subscribes: TokenBucket,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        options: &crate::BridgeOptions,
        identity: DeviceIdentity,
        conn_id: u64,
        tx: mpsc::Sender<Control>,
        registry: Registry,
        device: &Device,
        credential: String,
        keep_alive: Option<Duration>,
        token_expiry: Instant,
    ) -> Session {
        let mut endpoints = HashMap::new();
        endpoints.insert(
            identity.device_id.clone(),
            Endpoint::new(identity.clone(), device.config.clone(), None),
        );
        Session {
            own: identity,
            conn_id,
            tx,
            device: device.clone(),
            registry,
            credential,
            endpoints,
            errors_subscribed: false,
            next_packet_id: 0,
            inflight_commands: HashMap::new(),
            unwritten_commands: Vec::new(),
            keep_alive,
            token_expiry,
            started: Instant::now(),
            last_inbound: Instant::now(),
            telemetry: TokenBucket::full(
                options.telemetry_per_second,
                options.telemetry_burst,
                Instant::now(),
            ),
            subscribes: TokenBucket::full(
                options.subscribes_per_second,
                options.subscribe_burst,
                Instant::now(),
            ),
        }
    }

    pub(crate) fn identity(&self) -> &DeviceIdentity {
        &self.own
    }

    /// Leaves the session map: the connecting device and every attached one.
    pub(crate) fn end(&self, bridge: &Inner) {
        bridge.sessions.unregister(self.own.num_id, self.conn_id);
        for ep in self.endpoints.values() {
            if let Some(conn_id) = ep.conn_id {
                bridge.sessions.unregister(ep.identity.num_id, conn_id);
            }
        }
    }

    fn deadline(
        &self,
        options: &crate::BridgeOptions,
        write_deadline: Option<Instant>,
    ) -> (Instant, Timer) {
        let mut deadline = (self.last_inbound + options.idle_timeout, Timer::Idle);
        if let Some(w) = write_deadline {
            deadline = deadline.min((w, Timer::Write));
        }
        if let Some(k) = self.keep_alive {
            deadline = deadline.min((self.last_inbound + k, Timer::KeepAlive));
        }
        deadline = deadline.min((self.token_expiry, Timer::Token));
        deadline = deadline.min((self.started + options.max_connection_age, Timer::Age));
        for ep in self.endpoints.values() {
            if let Some((_, _, sent)) = ep.config_inflight {
                deadline = deadline.min((sent + options.config_resend_interval, Timer::Config));
            }
        }
        let pending = self.inflight_commands.values();
        let unwritten = self.unwritten_commands.iter().map(|(_, c)| c);
        if let Some(sent) = pending.chain(unwritten).map(|c| c.sent).min() {
            deadline = deadline.min((sent + options.command_ack_timeout, Timer::Command));
        }
        deadline
    }

    fn packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            let id = self.next_packet_id;
            let busy = id == 0
                || self.inflight_commands.contains_key(&id)
                || self
                    .endpoints
                    .values()
                    .any(|ep| ep.config_inflight.is_some_and(|(p, _, _)| p == id));
            if !busy {
                return id;
            }
        }
    }

    pub(crate) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        mut rx: mpsc::Receiver<Control>,
    ) -> CloseReason {
        let closing = self.serve(bridge, wire, &mut rx).await;
        self.end(bridge);
        let unwritten = self.unwritten_commands.drain(..).map(|(_, c)| c);
        for pending in self
            .inflight_commands
            .drain()
            .map(|(_, c)| c)
            .chain(unwritten)
        {
            let _ = pending.reply.send(Err(Rejection::new(
                ErrorCode::Unavailable,
                "the device disconnected before acknowledging the command",
            )));
        }
        closing
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        rx: &mut mpsc::Receiver<Control>,
    ) -> CloseReason {
        let mut shutdown = bridge.shutdown.clone();
        loop {
            // Everything already buffered first (e.g. SUBSCRIBEs pipelined behind CONNECT).
            while let Some(read) = wire.buffered() {
                if let Some(reason) = self.on_read(bridge, wire, read).await {
                    return reason;
                }
            }
            let (deadline, why) = self.deadline(&bridge.options, wire.write_deadline());
            tokio::select! {
                io = wire.pump() => match io {
                    Ok(Pumped::Read(0)) | Err(_) => return CloseReason::Clean,
                    Ok(Pumped::Read(_)) => {}
                    Ok(Pumped::Wrote) => self.answer_written_commands(wire.written()),
                },
                control = rx.recv() => match control {
                    Some(c) => if let Some(reason) = self.on_control(bridge, wire, c).await { return reason },
                    None => return CloseReason::Clean,
                },
                _ = tokio::time::sleep_until(deadline) => match why {
                    Timer::Config => {
                        if let Err(reason) = self.resend_due_configs(bridge, wire).await { return reason; }
                    }
                    Timer::Command => self.expire_commands(&bridge.options),
                    Timer::Write => return CloseReason::WriteTimeout(bridge.options.write_timeout),
                    Timer::Token => return CloseReason::TokenExpired,
                    Timer::KeepAlive => return CloseReason::KeepAlive,
                    Timer::Age => return CloseReason::MaxAge,
                    Timer::Idle => return CloseReason::Idle,
                },
                _ = crate::bridge::stopped(&mut shutdown) => return CloseReason::ShuttingDown,
            }
        }
    }

    async fn on_read<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        read: Read,
    ) -> Option<CloseReason> {
        let packet = match read {
            Read::Packet(p) => p,
            Read::Eof => return Some(CloseReason::Clean),
            Read::Invalid(e) => return Some(CloseReason::Invalid(e)),
        };
        self.last_inbound = Instant::now();
        let result = match packet {
            Packet::Publish(p) => self.on_publish(bridge, wire, p).await,
            Packet::Subscribe(s) => self.on_subscribe(bridge, wire, s).await,
            Packet::Unsubscribe(u) => {
                if let Err(reason) = self.take_subscribe_token(&bridge.options) {
                    return Some(reason);
                }
                for f in &u.filters {
                    match topic::parse_subscribe(f) {
                        Some(SubscribeTopic::Config { device }) => {
                            if let Some(ep) = self.endpoint_mut(device) {
                                ep.config_qos = None;
                                ep.config_inflight = None;
                            }
                        }
                        Some(SubscribeTopic::Commands { device, .. }) => {
                            if let Some(ep) = self.endpoint_mut(device) {
                                ep.commands = None;
                            }
                        }
                        Some(SubscribeTopic::Errors { .. }) => self.errors_subscribed = false,
                        None => {}
                    }
                }
                wire.queue(&Packet::UnsubAck(u.packet_id)).map(drop)
            }
            Packet::PubAck(id) => {
                self.on_puback(bridge, id).await;
                Ok(())
            }
            Packet::PingReq => {
                bridge
                    .activity
                    .heartbeat(&self.own.registry, self.own.num_id, Utc::now());
                wire.queue(&Packet::PingResp).map(drop)
            }
            Packet::Disconnect => Err(CloseReason::Clean),
            Packet::Connect(_) => Err(CloseReason::SecondConnect),
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
                Err(CloseReason::QoS2Flow)
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(CloseReason::ServerPacket)
            }
        };
        result.err()
    }

    fn endpoint_mut(&mut self, device: &str) -> Option<&mut Endpoint> {
        self.endpoints
            .iter_mut()
            .find(|(id, _)| id.as_str() == device)
            .map(|(_, ep)| ep)
    }

    fn endpoint_key(&self, device: &str) -> Option<DeviceId> {
        self.endpoints
            .keys()
            .find(|id| id.as_str() == device)
            .cloned()
    }

    fn key_for_num_id(&self, num_id: u64) -> Option<DeviceId> {
        self.endpoints
            .iter()
            .find(|(_, ep)| ep.identity.num_id == num_id)
            .map(|(k, _)| k.clone())
    }

    fn is_gateway(&self) -> bool {
        self.device.gateway_config.is_gateway()
    }

    fn not_allowed(&self, what: &str) -> CloseReason {
        CloseReason::NotAllowed {
            device: self.own.device_id.clone(),
            what: what.to_owned(),
        }
    }

    async fn on_publish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        p: Publish,
    ) -> Result<(), CloseReason> {
        if p.qos == QoS::ExactlyOnce {
            return Err(CloseReason::QoS2Publish);
        }
        match topic::parse_publish(&p.topic) {
            Some(PublishTopic::Events { device, subfolder }) => {
                let Some(key) = self.endpoint_key(device) else {
                    return Err(self.not_allowed(&format!("publish to '{}'", p.topic)));
                };
                if p.payload.len() > bridge.options.telemetry_max_bytes {
                    return Err(CloseReason::TelemetryTooLarge {
                        bytes: p.payload.len(),
                        limit: bridge.options.telemetry_max_bytes,
                    });
                }
                if !self.telemetry.try_take(Instant::now()) {
                    return Err(CloseReason::TelemetryRate {
                        per_second: bridge.options.telemetry_per_second,
                    });
                }
                let identity = self
                    .endpoints
                    .get(&key)
                    .map(|ep| ep.identity.clone())
                    .unwrap_or_else(|| self.own.clone());
                let data = p.payload.clone();
                ingest::telemetry(
                    bridge,
                    &self.registry,
                    &identity,
                    subfolder,
                    data,
                    Via::Mqtt,
                )
                .await
                .map_err(CloseReason::Ingest)?;
                ack(wire, &p).await
            }
            Some(PublishTopic::State { device }) => {
                let Some(key) = self.endpoint_key(device) else {
                    return Err(self.not_allowed(&format!("publish to '{}'", p.topic)));
                };
                if p.payload.len() > bridge.options.state_max_bytes {
                    return Err(CloseReason::StateTooLarge {
                        bytes: p.payload.len(),
                        limit: bridge.options.state_max_bytes,
                    });
                }
                let now = Instant::now();
                let Some(ep) = self.endpoints.get_mut(&key) else {
                    return Ok(());
                };
                let identity = ep.identity.clone();
                if ep
                    .last_state
                    .is_some_and(|last| now < last + bridge.options.state_min_interval)
                {
                    // Over the state rate: dropped, acknowledged anyway, and recorded (SPEC.md §4.6).
                    let message = format!(
                        "mqtt: state reports faster than one per {} ms are dropped",
                        bridge.options.state_min_interval.as_millis()
                    );
                    crate::mqtt::connection::record_error(
                        bridge,
                        &identity,
                        ErrorCode::ResourceExhausted,
                        message,
                    );
                    return ack(wire, &p).await;
                }
                ep.last_state = Some(now);
                store_state(bridge, &identity, &self.registry, p.payload.clone())
                    .await
                    .map_err(CloseReason::State)?;
                ack(wire, &p).await
            }
            Some(PublishTopic::Attach { device }) if self.is_gateway() => {
                self.attach(bridge, wire, device, &p).await
            }
            Some(PublishTopic::Detach { device }) if self.is_gateway() => {
                let attached = self
                    .endpoint_key(device)
                    .filter(|k| *k != self.own.device_id)
                    .and_then(|k| self.endpoints.get(&k))
                    .map(|ep| ep.identity.num_id);
                if let Some(num_id) = attached {
                    self.detach(bridge, num_id);
                }
                ack(wire, &p).await
            }
            Some(PublishTopic::Attach { .. }) | Some(PublishTopic::Detach { .. }) => {
                Err(self.not_allowed("attach or detach devices: it is not a gateway"))
            }
            None => Err(self.not_allowed(&format!("publish to '{}'", p.topic))),
        }
    }

    /// Attaches a device to this gateway; a refusal answers on the errors topic (no PUBACK).
    async fn attach<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        device: &str,
        p: &Publish,
    ) -> Result<(), CloseReason> {
        if self.endpoint_key(device).is_some() {
            return ack(wire, p).await;
        }
        let token = gateway::attach_token(&p.payload);
        let result = async {
            let id: DeviceId = device
                .parse()
                .map_err(|_| format!("'{device}' is not a valid device id"))?;
            let target = bridge
                .registry
                .store()
                .get_device(&self.own.registry, &DeviceRef::Id(id))
                .await
                .map_err(|_| {
                    format!(
                        "device `{device}` does not exist in registry `{}`",
                        self.registry.id
                    )
                })?;
            let bound = self.is_bound(bridge, target.num_id).await;
            let credential = gateway::authorize_attach(
                &self.device,
                &target,
                bound,
                token.as_deref(),
                &self.own.registry.project,
                Utc::now(),
            )?;
            Ok::<(Device, Option<String>), String>((target, credential))
        }
        .await;
        let (target, credential) = match result {
            Ok(t) => t,
            Err(description) => {
                tracing::debug!(gateway = %self.own.device_id, device, reason = %description, "attach refused");
                self.send_error(
                    wire,
                    "GATEWAY_ATTACHMENT_ERROR",
                    &description,
                    device,
                    "ATTACH",
                    &p.topic,
                    p.packet_id.unwrap_or(0),
                )
                .await?;
                return Ok(());
            }
        };
        let identity = DeviceIdentity {
            registry: self.own.registry.clone(),
            device_id: target.id.clone(),
            num_id: target.num_id,
        };
        let conn_id =
            bridge
                .sessions
                .register(target.num_id, self.own.registry.clone(), self.tx.clone());
        let mut endpoint = Endpoint::new(identity.clone(), target.config.clone(), Some(conn_id));
        endpoint.attach_credential = credential;
        self.endpoints.insert(target.id.clone(), endpoint);
        let (gateway_id, now) = (self.own.device_id.to_string(), Utc::now());
        let update = Box::new(move |d: &mut Device| {
            d.gateway_config.last_accessed_gateway_id = gateway_id;
            d.gateway_config.last_accessed_gateway_time = Some(now);
        });
        let _ = bridge.record(&identity, update).await;
        ack(wire, p).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_error<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        error_type: &str,
        description: &str,
        device: &str,
        message_type: &str,
        topic: &str,
        packet_id: u16,
    ) -> Result<(), CloseReason> {
        if !self.errors_subscribed {
            return Ok(());
        }
        let payload = gateway::error_message(
            error_type,
            description,
            device,
            message_type,
            topic,
            packet_id,
        );
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: format!("/devices/{}/errors", self.own.device_id),
            packet_id: None,
            payload: Bytes::from(payload),
        };
        wire.queue(&Packet::Publish(publish)).map(drop)
    }

    /// Takes one SUBSCRIBE/UNSUBSCRIBE token; `Err` closes a connection over its rate.
    fn take_subscribe_token(&mut self, options: &crate::BridgeOptions) -> Result<(), CloseReason> {
        if self.subscribes.try_take(Instant::now()) {
            return Ok(());
        }
        Err(CloseReason::SubscribeRate {
            per_second: options.subscribes_per_second,
        })
    }

    /// Distinct command filters the connection holds, over all its devices.
    fn command_filter_count(&self) -> usize {
        self.endpoints
            .values()
            .filter_map(|ep| ep.commands.as_ref())
            .map(|(_, filters)| filters.len())
            .sum()
    }

    async fn on_subscribe<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        s: Subscribe,
    ) -> Result<(), CloseReason> {
        self.take_subscribe_token(&bridge.options)?;
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut send_config = Vec::new();
        let mut held = self.command_filter_count();
        let max = bridge.options.command_filters_max;
        for (filter, qos) in &s.filters {
            let granted = (*qos).min(QoS::AtLeastOnce);
            let own = self.own.device_id.clone();
            match topic::parse_subscribe(filter) {
                Some(SubscribeTopic::Config { device }) if self.endpoint_key(device).is_some() => {
                    if let Some(ep) = self.endpoint_mut(device) {
                        ep.config_qos = Some(granted);
                        send_config.push(ep.identity.device_id.clone());
                    }
                    codes.push(granted as u8);
                }
                Some(SubscribeTopic::Commands { device, subfolder })
                    if self.endpoint_key(device).is_some() =>
                {
                    if let Some(ep) = self.endpoint_mut(device) {
                        let entry = ep.commands.get_or_insert((granted, CommandFilters::new()));
                        if !quota::add_command_filter(&mut entry.1, subfolder, &mut held, max) {
                            return Err(CloseReason::CommandFilters { max });
                        }
                        entry.0 = entry.0.max(granted);
                    }
                    codes.push(granted as u8);
                }
                Some(SubscribeTopic::Errors { device }) if device == own.as_str() => {
                    self.errors_subscribed = true;
                    codes.push(QoS::AtMostOnce as u8);
                }
                _ if bridge.options.subscribe_failure_suback => codes.push(0x80),
                _ => return Err(self.not_allowed(&format!("subscribe to '{filter}'"))),
            }
        }
        wire.queue(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            return_codes: codes,
        }))?;
        // The latest config goes out right after the SUBACK, even when empty (SPEC.md §4.7).
        for key in send_config {
            self.send_config(bridge, wire, &key, false).await?;
        }
        Ok(())
    }

    async fn send_config<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        key: &DeviceId,
        dup: bool,
    ) -> Result<(), CloseReason> {
        let Some((qos, inflight, version)) = self
            .endpoints
            .get(key)
            .map(|ep| (ep.config_qos, ep.config_inflight, ep.config.version))
        else {
            return Ok(());
        };
        let Some(qos) = qos else {
            if let Some(ep) = self.endpoints.get_mut(key) {
                ep.config_inflight = None;
            }
            return Ok(());
        };
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ => Some(match (dup, inflight) {
                (true, Some((id, v, _))) if v == version => id,
                _ => self.packet_id(),
            }),
        };
        let Some(ep) = self.endpoints.get_mut(key) else {
            return Ok(());
        };
        let publish = Publish {
            dup: dup && packet_id.is_some(),
            qos,
            retain: false,
            topic: format!("/devices/{}/config", ep.identity.device_id),
            packet_id,
            payload: Bytes::from(ep.config.binary_data.clone()),
        };
        ep.config_inflight = packet_id.map(|id| (id, ep.config.version, Instant::now()));
        let target = ep.identity.clone();
        wire.queue(&Packet::Publish(publish))?;
        let now = Utc::now();
        let update = Box::new(move |d: &mut Device| d.last_config_send_time = Some(now));
        let _ = bridge.record(&target, update).await;
        Ok(())
    }

    async fn resend_due_configs<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
    ) -> Result<(), CloseReason> {
        let due: Vec<DeviceId> = self
            .endpoints
            .iter()
            .filter(|(_, ep)| {
                ep.config_inflight.is_some_and(|(_, _, sent)| {
                    sent + bridge.options.config_resend_interval <= Instant::now()
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.send_config(bridge, wire, &key, true).await?;
        }
        Ok(())
    }

    /// Answers DEADLINE_EXCEEDED for commands not PUBACKed (QoS 1) or not written (QoS 0) in
    /// time; the connection stays.
    fn expire_commands(&mut self, options: &crate::BridgeOptions) {
        let now = Instant::now();
        let timeout = options.command_ack_timeout;
        let late = self
            .inflight_commands
            .extract_if(|_, c| c.sent + timeout <= now)
            .map(|(_, c)| c);
        let unwritten = self
            .unwritten_commands
            .extract_if(.., |(_, c)| c.sent + timeout <= now)
            .map(|(_, c)| c);
        for pending in late.chain(unwritten) {
            let _ = pending.reply.send(Err(command_deadline_exceeded(timeout)));
        }
    }

    /// Answers the QoS 0 commands the socket has taken (`written` bytes so far).
    fn answer_written_commands(&mut self, written: u64) {
        for (_, pending) in self
            .unwritten_commands
            .extract_if(.., |(end, _)| *end <= written)
        {
            let _ = pending.reply.send(Ok(()));
        }
    }

    async fn on_puback(&mut self, bridge: &Inner, id: u16) {
        if let Some(pending) = self.inflight_commands.remove(&id) {
            let _ = pending.reply.send(Ok(()));
            return;
        }
        let acked = self
            .endpoints
            .values_mut()
            .find_map(|ep| match ep.config_inflight {
                Some((pid, version, _)) if pid == id => {
                    ep.config_inflight = None;
                    Some((ep.identity.clone(), version))
                }
                _ => None,
            });
        if let Some((identity, version)) = acked {
            let now = Utc::now();
            let update = Box::new(move |d: &mut Device| {
                if d.config.version == version {
                    d.config.device_ack_time = Some(now);
                }
                d.last_config_ack_time = Some(now);
            });
            let _ = bridge.record(&identity, update).await;
        }
    }

    /// Whether device `num_id` is bound to this gateway (false when the store cannot say).
    async fn is_bound(&self, bridge: &Inner, num_id: u64) -> bool {
        bridge
            .registry
            .store()
            .gateways_bound_to_device(num_id)
            .await
            .map(|g| g.contains(&self.own.num_id))
            .unwrap_or(false)
    }

    /// Detaches an attached device the server revoked, telling the gateway why on its errors
    /// topic (if subscribed).
    async fn revoke_attachment<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        num_id: u64,
        reason: &str,
    ) -> Result<(), CloseReason> {
        let Some(key) = self
            .key_for_num_id(num_id)
            .filter(|k| *k != self.own.device_id)
        else {
            return Ok(());
        };
        tracing::debug!(gateway = %self.own.device_id, device = %key, reason, "attachment revoked");
        self.detach(bridge, num_id);
        let description = format!("device `{key}` was detached: {reason}");
        let topic = format!("/devices/{key}/detach");
        self.send_error(
            wire,
            "GATEWAY_ATTACHMENT_ERROR",
            &description,
            key.as_str(),
            "DETACH",
            &topic,
            0,
        )
        .await
    }

    /// Re-checks the attachment of `device` (changed through the admin API, or unbound) under
    /// the gateway's current settings; detaches it when no longer allowed.
    async fn recheck_attachment<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        device: &Device,
    ) -> Result<(), CloseReason> {
        let Some(key) = self.key_for_num_id(device.num_id) else {
            return Ok(());
        };
        if key == self.own.device_id {
            return Ok(());
        }
        let credential = self
            .endpoints
            .get(&key)
            .and_then(|ep| ep.attach_credential.clone());
        let bound = self.is_bound(bridge, device.num_id).await;
        let allowed = gateway::recheck_attachment(
            &self.device,
            device,
            bound,
            credential.as_deref(),
            Utc::now(),
        );
        match allowed {
            Ok(()) => Ok(()),
            Err(reason) => {
                self.revoke_attachment(bridge, wire, device.num_id, &reason)
                    .await
            }
        }
    }

    /// Re-checks the attachment of device `num_id` as the store has it now.
    async fn recheck_attachment_of<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        num_id: u64,
    ) -> Result<(), CloseReason> {
        let device = bridge
            .registry
            .store()
            .get_device(&self.own.registry, &DeviceRef::NumId(num_id))
            .await;
        match device {
            Ok(device) => self.recheck_attachment(bridge, wire, &device).await,
            Err(e) => {
                let reason = format!("it could not be read: {e}");
                self.revoke_attachment(bridge, wire, num_id, &reason).await
            }
        }
    }

    /// Detaches an attached device (revoked, deleted, or attached elsewhere).
    fn detach(&mut self, bridge: &Inner, num_id: u64) {
        let Some(key) = self.key_for_num_id(num_id) else {
            return;
        };
        if let Some(conn_id) = self.endpoints.remove(&key).and_then(|ep| ep.conn_id) {
            bridge.sessions.unregister(num_id, conn_id);
        }
    }

    async fn on_control<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        control: Control,
    ) -> Option<CloseReason> {
        match control {
            Control::Kick {
                num_id,
                code,
                message,
            } => {
                if num_id == self.own.num_id {
                    return Some(CloseReason::Kicked { code, message });
                }
                self.revoke_attachment(bridge, wire, num_id, &message)
                    .await
                    .err()
            }
            Control::DeviceChanged(device) if device.num_id == self.own.num_id => {
                if device.blocked {
                    return Some(CloseReason::Blocked);
                }
                if !gateway::holds_credential(&device, &self.credential, Utc::now()) {
                    return Some(CloseReason::CredentialRemoved);
                }
                let auth_changed = device.gateway_config.gateway_auth_method
                    != self.device.gateway_config.gateway_auth_method
                    || device.gateway_config.is_gateway() != self.is_gateway();
                self.device = *device;
                if auth_changed {
                    let attached: Vec<u64> = self
                        .endpoints
                        .values()
                        .filter(|ep| ep.conn_id.is_some())
                        .map(|ep| ep.identity.num_id)
                        .collect();
                    for num_id in attached {
                        if let Err(reason) = self.recheck_attachment_of(bridge, wire, num_id).await
                        {
                            return Some(reason);
                        }
                    }
                }
                None
            }
            Control::DeviceChanged(device) => {
                self.recheck_attachment(bridge, wire, &device).await.err()
            }
            Control::AttachmentChanged { num_id } => {
                self.recheck_attachment_of(bridge, wire, num_id).await.err()
            }
            Control::RegistryChanged(registry) => {
                if !registry.mqtt_state.is_enabled() {
                    return Some(CloseReason::MqttDisabled);
                }
                self.registry = *registry;
                None
            }
            Control::Config { num_id, config } => {
                let key = self.key_for_num_id(num_id)?;
                let newer = self.endpoints.get_mut(&key).is_some_and(|ep| {
                    let newer = config.version > ep.config.version;
                    if newer {
                        ep.config = config;
                    }
                    newer
                });
                if newer && let Err(reason) = self.send_config(bridge, wire, &key, false).await {
                    return Some(reason);
                }
                None
            }
            Control::Command {
                num_id,
                subfolder,
                data,
                reply,
            } => {
                let target = self
                    .key_for_num_id(num_id)
                    .and_then(|k| self.endpoints.get(&k))
                    .and_then(|ep| {
                        let qos = ep.commands.as_ref().and_then(|(qos, filters)| {
                            filters
                                .iter()
                                .any(|f| f.as_deref().is_none_or(|f| f == subfolder))
                                .then_some(*qos)
                        });
                        qos.map(|q| (q, ep.identity.device_id.clone()))
                    });
                let Some((qos, device_id)) = target else {
                    let _ = reply.send(Err(Rejection::failed_precondition(
                        "The device is not subscribed to the commands topic.".to_owned(),
                    )));
                    return None;
                };
                let packet_id = (qos == QoS::AtLeastOnce).then(|| self.packet_id());
                let topic = if subfolder.is_empty() {
                    format!("/devices/{device_id}/commands")
                } else {
                    format!("/devices/{device_id}/commands/{subfolder}")
                };
                let publish = Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic,
                    packet_id,
                    payload: data,
                };
                let end = match wire.queue(&Packet::Publish(publish)) {
                    Ok(end) => end,
                    Err(reason) => {
                        let _ = reply.send(Err(Rejection::new(
                            ErrorCode::Unavailable,
                            "the device is not reading its connection, which is closed",
                        )));
                        return Some(reason);
                    }
                };
                // QoS 0: answered once written. QoS 1: once PUBACKed. Either way
                // DEADLINE_EXCEEDED after the command ack timeout.
                let pending = PendingCommand {
                    reply,
                    sent: Instant::now(),
                };
                match packet_id {
                    Some(id) => {
                        self.inflight_commands.insert(id, pending);
                    }
                    None => self.unwritten_commands.push((end, pending)),
                }
                None
            }
        }
    }
}

async fn ack<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    p: &Publish,
) -> Result<(), CloseReason> {
    if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
        wire.queue(&Packet::PubAck(id))?;
    }
    Ok(())
}
