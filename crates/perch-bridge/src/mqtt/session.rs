//! An authenticated MQTT session: the topic ACL, telemetry with a PUBACK only once durable,
//! state, config and command delivery, gateways acting for attached devices, keep-alive, idle
//! and JWT-expiry deadlines, and revocation through the session map.
//!
//! A session speaks for its own device and, when it is a gateway, for each device attached to
//! it; each of those is an `Endpoint` with its own identity, config and command subscriptions.
//! Any protocol or ACL violation closes the connection and records `lastErrorStatus`, as IoT
//! Core did; a failed attach only answers on the gateway's errors topic.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use perch_core::model::{Device, DeviceConfig, Registry};
use perch_core::{DeviceId, DeviceRef, ErrorCode, Rejection};
use perch_store::log::NewMessage;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::bridge::Inner;
use crate::mqtt::codec::{Packet, Publish, QoS, SubAck, Subscribe};
use crate::mqtt::connection::{Closing, Read, Wire};
use crate::mqtt::gateway;
use crate::mqtt::topic::{self, PublishTopic, SubscribeTopic};
use crate::router::{self, DeviceIdentity};
use crate::sessions::Control;
use crate::state::store_state;

/// A QoS 1 command written to the device, waiting for its PUBACK to answer the admin call.
struct PendingCommand {
    reply: oneshot::Sender<Result<(), Rejection>>,
    sent: Instant,
}

/// One device a session speaks for.
struct Endpoint {
    identity: DeviceIdentity,
    /// The newest config known; pushed on subscribe and on change.
    config: DeviceConfig,
    config_qos: Option<QoS>,
    /// (packet id, version, sent at) of a QoS 1 config awaiting its PUBACK.
    config_inflight: Option<(u16, i64, Instant)>,
    /// Granted QoS and filters (None = `commands/#`) of the commands subscription.
    commands: Option<(QoS, Vec<Option<String>>)>,
    /// The session-map registration of an attached device (None for the session's own).
    conn_id: Option<u64>,
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
    keep_alive: Option<Duration>,
    token_expiry: Instant,
    started: Instant,
    last_inbound: Instant,
    /// Telemetry token bucket.
    telemetry: crate::rate::TokenBucket,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
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
            keep_alive,
            token_expiry,
            started: Instant::now(),
            last_inbound: Instant::now(),
            telemetry: crate::rate::TokenBucket::full(Instant::now()),
        }
    }

    /// Takes one telemetry token; false when the connection is over its rate.
    fn take_telemetry_token(&mut self, options: &crate::BridgeOptions) -> bool {
        self.telemetry.take(
            options.telemetry_per_second,
            options.telemetry_burst,
            Instant::now(),
        )
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

    fn deadline(&self, options: &crate::BridgeOptions) -> (Instant, &'static str) {
        let mut deadline = (self.last_inbound + options.idle_timeout, "idle");
        if let Some(k) = self.keep_alive {
            deadline = deadline.min((self.last_inbound + k, "keepalive"));
        }
        deadline = deadline.min((self.token_expiry, "token"));
        deadline = deadline.min((self.started + options.max_connection_age, "age"));
        for ep in self.endpoints.values() {
            if let Some((_, _, sent)) = ep.config_inflight {
                deadline = deadline.min((sent + options.config_resend_interval, "config"));
            }
        }
        if let Some(sent) = self.inflight_commands.values().map(|c| c.sent).min() {
            deadline = deadline.min((sent + options.command_ack_timeout, "command"));
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
    ) -> Closing {
        let closing = self.serve(bridge, wire, &mut rx).await;
        self.end(bridge);
        for (_, pending) in self.inflight_commands.drain() {
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
                _ = tokio::time::sleep_until(deadline) => match why {
                    "config" => {
                        if let Err(closing) = self.resend_due_configs(bridge, wire).await { return closing; }
                    }
                    "command" => self.expire_commands(&bridge.options),
                    "token" => return Closing::error(ErrorCode::Unauthenticated, "mqtt: SERVER: The authorization token expired."),
                    "keepalive" => return Closing::error(ErrorCode::DeadlineExceeded, "mqtt: SERVER: The connection timed out: no packet within 1.5 times the keep-alive."),
                    "age" => return Closing::error(ErrorCode::Unavailable, "mqtt: SERVER: The connection reached its maximum age."),
                    _ => return Closing::error(ErrorCode::DeadlineExceeded, "mqtt: SERVER: The connection was idle for too long."),
                },
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
                wire.send(&Packet::UnsubAck(u.packet_id))
                    .await
                    .map_err(|_| Closing::clean())
            }
            Packet::PubAck(id) => {
                self.on_puback(bridge, id).await;
                Ok(())
            }
            Packet::PingReq => {
                bridge
                    .activity
                    .heartbeat(&self.own.registry, self.own.num_id, Utc::now());
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

    fn not_allowed(&self, what: &str) -> Closing {
        Closing::error(
            ErrorCode::PermissionDenied,
            format!("mqtt: device `{}` may not {what}", self.own.device_id),
        )
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
        match topic::parse_publish(&p.topic) {
            Some(PublishTopic::Events { device, subfolder }) => {
                let Some(key) = self.endpoint_key(device) else {
                    return Err(self.not_allowed(&format!("publish to '{}'", p.topic)));
                };
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
                if !self.take_telemetry_token(&bridge.options) {
                    return Err(Closing::error(
                        ErrorCode::ResourceExhausted,
                        format!(
                            "mqtt: the connection sent telemetry faster than {} messages per second",
                            bridge.options.telemetry_per_second
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
                let identity = self
                    .endpoints
                    .get(&key)
                    .map(|ep| ep.identity.clone())
                    .unwrap_or_else(|| self.own.clone());
                let message = NewMessage {
                    data: p.payload.clone(),
                    attributes: router::trusted_attributes(&identity, subfolder),
                    ordering_key: String::new(),
                };
                if let Err(e) = bridge.pubsub.publish(topic, vec![message]).await {
                    return Err(Closing::error(
                        e.code(),
                        format!("mqtt: the telemetry could not be published to `{topic}`: {e}"),
                    ));
                }
                metrics::counter!("perch_device_events_total", "bridge" => "mqtt").increment(1);
                bridge
                    .activity
                    .event(&identity.registry, identity.num_id, Utc::now());
                ack(wire, &p).await
            }
            Some(PublishTopic::State { device }) => {
                let Some(key) = self.endpoint_key(device) else {
                    return Err(self.not_allowed(&format!("publish to '{}'", p.topic)));
                };
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
                    )
                    .await;
                    return ack(wire, &p).await;
                }
                ep.last_state = Some(now);
                store_state(bridge, &identity, &self.registry, p.payload.clone())
                    .await
                    .map_err(|e| Closing::error(e.code, format!("mqtt: {}", e.message)))?;
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
    ) -> Result<(), Closing> {
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
            let bound = bridge
                .registry
                .store()
                .gateways_bound_to_device(target.num_id)
                .await
                .map(|g| g.contains(&self.own.num_id))
                .unwrap_or(false);
            gateway::authorize_attach(
                &self.device,
                &target,
                bound,
                token.as_deref(),
                &self.own.registry.project,
                Utc::now(),
            )?;
            Ok::<Device, String>(target)
        }
        .await;
        let target = match result {
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
        self.endpoints.insert(
            target.id.clone(),
            Endpoint::new(identity.clone(), target.config.clone(), Some(conn_id)),
        );
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
    ) -> Result<(), Closing> {
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
        wire.send(&Packet::Publish(publish))
            .await
            .map_err(|_| Closing::clean())
    }

    async fn on_subscribe<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
        s: Subscribe,
    ) -> Result<(), Closing> {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut send_config = Vec::new();
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
                        let entry = ep.commands.get_or_insert((granted, Vec::new()));
                        entry.0 = entry.0.max(granted);
                        entry.1.push(subfolder.map(str::to_owned));
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
        wire.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            return_codes: codes,
        }))
        .await
        .map_err(|_| Closing::clean())?;
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
    ) -> Result<(), Closing> {
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
        wire.send(&Packet::Publish(publish))
            .await
            .map_err(|_| Closing::clean())?;
        let now = Utc::now();
        let update = Box::new(move |d: &mut Device| d.last_config_send_time = Some(now));
        let _ = bridge.record(&target, update).await;
        Ok(())
    }

    async fn resend_due_configs<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        bridge: &Inner,
        wire: &mut Wire<S>,
    ) -> Result<(), Closing> {
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

    /// Answers DEADLINE_EXCEEDED for commands not PUBACKed in time; the connection stays.
    fn expire_commands(&mut self, options: &crate::BridgeOptions) {
        let now = Instant::now();
        let late = self
            .inflight_commands
            .extract_if(|_, c| c.sent + options.command_ack_timeout <= now);
        for (_, pending) in late {
            let _ = pending.reply.send(Err(Rejection::new(
                ErrorCode::DeadlineExceeded,
                format!(
                    "the device did not acknowledge the command within {} s",
                    options.command_ack_timeout.as_secs_f64()
                ),
            )));
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
    ) -> Option<Closing> {
        match control {
            Control::Kick {
                num_id,
                code,
                message,
            } => {
                if num_id == self.own.num_id {
                    return Some(Closing::error(code, format!("mqtt: {message}")));
                }
                self.detach(bridge, num_id);
                None
            }
            Control::DeviceChanged(device) if device.num_id == self.own.num_id => {
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
                self.device = *device;
                None
            }
            Control::DeviceChanged(device) => {
                if device.blocked {
                    self.detach(bridge, device.num_id);
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
            Control::Config { num_id, config } => {
                let key = self.key_for_num_id(num_id)?;
                let newer = self.endpoints.get_mut(&key).is_some_and(|ep| {
                    let newer = config.version > ep.config.version;
                    if newer {
                        ep.config = config;
                    }
                    newer
                });
                if newer && let Err(closing) = self.send_config(bridge, wire, &key, false).await {
                    return Some(closing);
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
                if wire.send(&Packet::Publish(publish)).await.is_err() {
                    let _ = reply.send(Err(Rejection::new(
                        ErrorCode::Unavailable,
                        "the device connection closed while sending the command",
                    )));
                    return None;
                }
                // QoS 0: answered once written. QoS 1: once PUBACKed, or DEADLINE_EXCEEDED.
                match packet_id {
                    Some(id) => {
                        let sent = Instant::now();
                        self.inflight_commands
                            .insert(id, PendingCommand { reply, sent });
                    }
                    None => {
                        let _ = reply.send(Ok(()));
                    }
                }
                None
            }
        }
    }
}

async fn ack<S: AsyncRead + AsyncWrite + Unpin>(
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
