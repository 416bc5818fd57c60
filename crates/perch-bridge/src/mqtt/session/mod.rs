//! An authenticated MQTT session, without I/O: [`Session::handle`] takes one [`Event`] (a
//! decoded packet, a timer, a control message from the session map, output the socket took,
//! the outcome of an effect) with the time it happens, and returns the [`Action`]s to carry out
//! in order: packets to send, [`Effect`]s to run (publish, store state, registry reads and
//! writes), or a close with its typed reason. `connection.rs` owns the socket, the timers and
//! the effects; nothing here awaits or reads a clock.
//!
//! A session speaks for its own device and, when it is a gateway, for each device attached to
//! it; each of those is an `Endpoint` with its own identity, config and command subscriptions.
//! Any protocol or ACL violation closes the connection and records `lastErrorStatus`, as IoT
//! Core did; a failed attach only answers on the gateway's errors topic, and so does an
//! attachment an admin change revoked (unbind, delete, block, credentials).
//!
//! Owners: `publish` (the topic ACL, telemetry and state), `subscribe` (SUBSCRIBE and
//! UNSUBSCRIBE), `config` (config delivery and the QoS 1 resend), `commands` (command delivery
//! and its answers), `attach` (devices attached through a gateway, revocations), `timers`
//! (deadlines).
//!
//! Invariant: processing is serial. An effect whose outcome matters (a publish before its
//! PUBACK) is answered with `Event::Done` before the driver reads the next packet, and the
//! actions that answer brings are carried out before the rest, so PUBACKs follow PUBLISH order.

mod attach;
mod commands;
mod config;
mod publish;
mod subscribe;
#[cfg(test)]
mod tests;
mod timers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use perch_core::model::{Device, DeviceConfig, Registry};
use perch_core::{DeviceId, ErrorCode, Rejection};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub(crate) use self::attach::AttachRequest;
use self::commands::PendingCommand;
pub(crate) use self::timers::Timer;
use crate::BridgeOptions;
use crate::ingest::IngestError;
use crate::mqtt::close::CloseReason;
use crate::mqtt::codec::{Packet, QoS};
use crate::mqtt::quota::CommandFilters;
use crate::rate::TokenBucket;
use crate::router::DeviceIdentity;
use crate::sessions::{Control, Sessions};

/// When an event happens: the monotonic instant (deadlines, rates) and the wall clock (times
/// stored on devices, credential expiry).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub(crate) at: Instant,
    pub(crate) wall: DateTime<Utc>,
}

/// What a session reacts to.
#[derive(Debug)]
pub(crate) enum Event {
    /// A packet from the device.
    Packet(Packet),
    /// The deadline `Session::next_timer` named has passed.
    Timer(Timer),
    /// A message from the session map (revocations, configs, commands).
    Control(Control),
    /// The socket has taken the output of these command tickets (`Action::SendCommand`).
    Written(Vec<u64>),
    /// What an effect came to.
    Done(Outcome),
}

/// What the driver carries out, in order.
#[derive(Debug)]
pub(crate) enum Action {
    /// Queues a packet; a full queue closes the connection (`CloseReason::OutboundFull`).
    Send(Packet),
    /// Queues a command; `ticket` names it in `Event::Written` and in `Session::unsent`.
    SendCommand { packet: Packet, ticket: u64 },
    /// Runs an effect; some answer with `Event::Done`.
    Run(Effect),
    /// Ends the connection.
    Close(CloseReason),
}

/// Work against the bridge (Pub/Sub, the registry, activity) the driver does for a session.
#[derive(Debug)]
pub(crate) enum Effect {
    /// `ingest::telemetry`; answered with `Outcome::Telemetry`.
    Telemetry {
        identity: DeviceIdentity,
        registry: Arc<Registry>,
        subfolder: String,
        data: Bytes,
        ack: Option<u16>,
    },
    /// `state::store_state`; answered with `Outcome::State`.
    StoreState {
        identity: DeviceIdentity,
        registry: Arc<Registry>,
        data: Bytes,
        ack: Option<u16>,
    },
    /// Reads the device an attach names and whether it is bound to `gateway`; answered with
    /// `Outcome::AttachLookup`.
    LookUpAttach {
        gateway: DeviceIdentity,
        device: DeviceId,
        request: AttachRequest,
    },
    /// Reads attached device `num_id` (unless `device` is given) and whether it is still bound
    /// to `gateway`; answered with `Outcome::Attachment`.
    LookUpAttachment {
        gateway: DeviceIdentity,
        num_id: u64,
        device: Option<Box<Device>>,
    },
    /// Registry bookkeeping on a device; awaited, a failure ignored.
    Record {
        identity: DeviceIdentity,
        update: Update,
    },
    /// Records `lastErrorStatus` at the next activity flush.
    RecordError {
        identity: DeviceIdentity,
        code: ErrorCode,
        message: String,
        at: DateTime<Utc>,
    },
    /// Records `lastHeartbeatTime` at the next activity flush.
    Heartbeat {
        identity: DeviceIdentity,
        at: DateTime<Utc>,
    },
}

/// The outcome of an effect, fed back as `Event::Done`.
#[derive(Debug)]
pub(crate) enum Outcome {
    Telemetry {
        ack: Option<u16>,
        result: Result<(), IngestError>,
    },
    State {
        ack: Option<u16>,
        result: Result<(), Rejection>,
    },
    /// `found`: the device and whether it is bound to the gateway; None when it cannot be read.
    AttachLookup {
        request: AttachRequest,
        found: Option<(Box<Device>, bool)>,
    },
    /// `found`: the device and whether it is bound to the gateway, or why it cannot be read.
    Attachment {
        num_id: u64,
        found: Result<(Box<Device>, bool), String>,
    },
}

/// A registry write the bridge makes for its bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Update {
    /// A config went out.
    ConfigSent { at: DateTime<Utc> },
    /// The device PUBACKed config `version`.
    ConfigAcked { version: i64, at: DateTime<Utc> },
    /// The device was attached through `gateway_id`.
    GatewayAccessed {
        gateway_id: String,
        at: DateTime<Utc>,
    },
}

impl Update {
    pub(crate) fn apply(self, d: &mut Device) {
        match self {
            Update::ConfigSent { at } => d.last_config_send_time = Some(at),
            Update::ConfigAcked { version, at } => {
                if d.config.version == version {
                    d.config.device_ack_time = Some(at);
                }
                d.last_config_ack_time = Some(at);
            }
            Update::GatewayAccessed { gateway_id, at } => {
                d.gateway_config.last_accessed_gateway_id = gateway_id;
                d.gateway_config.last_accessed_gateway_time = Some(at);
            }
        }
    }
}

/// One device a session speaks for.
#[derive(Debug)]
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

/// How a session is reached and what it was authenticated with.
pub(crate) struct Handshake {
    pub(crate) identity: DeviceIdentity,
    /// This connection's registration in the session map, and its control sender.
    pub(crate) conn_id: u64,
    pub(crate) tx: mpsc::Sender<Control>,
    pub(crate) registry: Registry,
    pub(crate) device: Device,
    /// The credential (PEM) the device authenticated with.
    pub(crate) credential: String,
    pub(crate) keep_alive: Option<Duration>,
    pub(crate) token_expiry: Instant,
}

/// An authenticated device's session.
pub(crate) struct Session {
    options: BridgeOptions,
    sessions: Sessions,
    own: DeviceIdentity,
    conn_id: u64,
    tx: mpsc::Sender<Control>,
    /// The connecting device as of the handshake (gateway settings, credentials).
    device: Device,
    registry: Arc<Registry>,
    /// The credential (PEM) the device authenticated with: removing it revokes the session.
    credential: String,
    endpoints: HashMap<DeviceId, Endpoint>,
    errors_subscribed: bool,
    next_packet_id: u16,
    next_ticket: u64,
    inflight_commands: HashMap<u16, PendingCommand>,
    /// QoS 0 commands queued, answered once written.
    unwritten_commands: Vec<PendingCommand>,
    keep_alive: Option<Duration>,
    token_expiry: Instant,
    started: Instant,
    last_inbound: Instant,
    telemetry: TokenBucket,
    /// SUBSCRIBE and UNSUBSCRIBE packets.
    subscribes: TokenBucket,
}

impl Session {
    pub(crate) fn new(
        options: &BridgeOptions,
        sessions: Sessions,
        handshake: Handshake,
        now: Instant,
    ) -> Session {
        let Handshake {
            identity,
            conn_id,
            tx,
            registry,
            device,
            credential,
            keep_alive,
            token_expiry,
        } = handshake;
        let mut endpoints = HashMap::new();
        endpoints.insert(
            identity.device_id.clone(),
            Endpoint::new(identity.clone(), device.config.clone(), None),
        );
        Session {
            options: options.clone(),
            sessions,
            own: identity,
            conn_id,
            tx,
            device,
            registry: Arc::new(registry),
            credential,
            endpoints,
            errors_subscribed: false,
            next_packet_id: 0,
            next_ticket: 0,
            inflight_commands: HashMap::new(),
            unwritten_commands: Vec::new(),
            keep_alive,
            token_expiry,
            started: now,
            last_inbound: now,
            telemetry: TokenBucket::full(
                options.telemetry_per_second,
                options.telemetry_burst,
                now,
            ),
            subscribes: TokenBucket::full(
                options.subscribes_per_second,
                options.subscribe_burst,
                now,
            ),
        }
    }

    pub(crate) fn identity(&self) -> &DeviceIdentity {
        &self.own
    }

    /// Reacts to `event` at `now`: the actions to carry out, in order. A `Close` is last.
    pub(crate) fn handle(&mut self, event: Event, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        let result = match event {
            Event::Packet(packet) => {
                self.last_inbound = now.at;
                self.on_packet(packet, now, &mut out)
            }
            Event::Timer(timer) => self.on_timer(timer, now, &mut out),
            Event::Control(control) => self.on_control(control, now, &mut out),
            Event::Written(tickets) => {
                self.answer_written_commands(&tickets);
                Ok(())
            }
            Event::Done(outcome) => self.on_done(outcome, now, &mut out),
        };
        if let Err(reason) = result {
            out.push(Action::Close(reason));
        }
        out
    }

    /// Leaves the session map (the connecting device and every attached one) and answers the
    /// commands still waiting: the connection is over.
    pub(crate) fn finish(&mut self) {
        self.end();
        self.fail_pending_commands();
    }

    /// Leaves the session map: the connecting device and every attached one.
    pub(crate) fn end(&self) {
        self.sessions.unregister(self.own.num_id, self.conn_id);
        for ep in self.endpoints.values() {
            if let Some(conn_id) = ep.conn_id {
                self.sessions.unregister(ep.identity.num_id, conn_id);
            }
        }
    }

    fn on_packet(
        &mut self,
        packet: Packet,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Result<(), CloseReason> {
        match packet {
            Packet::Publish(p) => self.on_publish(p, now, out),
            Packet::Subscribe(s) => self.on_subscribe(s, now, out),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u, now, out),
            Packet::PubAck(id) => {
                self.on_puback(id, now, out);
                Ok(())
            }
            Packet::PingReq => {
                out.push(Action::Run(Effect::Heartbeat {
                    identity: self.own.clone(),
                    at: now.wall,
                }));
                out.push(Action::Send(Packet::PingResp));
                Ok(())
            }
            Packet::Disconnect => Err(CloseReason::Clean),
            Packet::Connect(_) => Err(CloseReason::SecondConnect),
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
                Err(CloseReason::QoS2Flow)
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(CloseReason::ServerPacket)
            }
        }
    }

    fn on_control(
        &mut self,
        control: Control,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Result<(), CloseReason> {
        match control {
            Control::Kick {
                num_id,
                code,
                message,
            } => {
                if num_id == self.own.num_id {
                    return Err(CloseReason::Kicked { code, message });
                }
                self.revoke_attachment(num_id, &message, out);
                Ok(())
            }
            Control::DeviceChanged(device) if device.num_id == self.own.num_id => {
                self.own_device_changed(*device, now, out)
            }
            Control::DeviceChanged(device) => {
                self.recheck_attachment(device.num_id, Some(device), out);
                Ok(())
            }
            Control::AttachmentChanged { num_id } => {
                self.recheck_attachment(num_id, None, out);
                Ok(())
            }
            Control::RegistryChanged(registry) => {
                if !registry.mqtt_state.is_enabled() {
                    return Err(CloseReason::MqttDisabled);
                }
                self.registry = Arc::new(*registry);
                Ok(())
            }
            Control::Config { num_id, config } => {
                self.on_new_config(num_id, config, now, out);
                Ok(())
            }
            Control::Command {
                num_id,
                subfolder,
                data,
                reply,
            } => {
                self.on_command(num_id, subfolder, data, reply, now, out);
                Ok(())
            }
        }
    }

    fn on_done(
        &mut self,
        outcome: Outcome,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Result<(), CloseReason> {
        match outcome {
            Outcome::Telemetry { ack, result } => {
                result.map_err(CloseReason::Ingest)?;
                push_ack(ack, out);
            }
            Outcome::State { ack, result } => {
                result.map_err(CloseReason::State)?;
                push_ack(ack, out);
            }
            Outcome::AttachLookup { request, found } => {
                self.finish_attach(request, found, now, out)
            }
            Outcome::Attachment { num_id, found } => self.finish_recheck(num_id, found, now, out),
        }
        Ok(())
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

    /// A packet id no QoS 1 command or config in flight holds.
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
}

/// The PUBACK a QoS 1 PUBLISH gets (`ack` is its packet id, None for QoS 0).
fn push_ack(ack: Option<u16>, out: &mut Vec<Action>) {
    if let Some(id) = ack {
        out.push(Action::Send(Packet::PubAck(id)));
    }
}
