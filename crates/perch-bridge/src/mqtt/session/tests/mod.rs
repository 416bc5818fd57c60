//! Table tests: a session driven event by event with a hand-moved clock, no sockets and no
//! runtime. Actions are compared as one line each (`describe`). `packets`: what the device
//! sends (publish, subscribe, config, protocol violations); `delivery`: what reaches it or
//! ends it (commands, deadlines, control messages, gateways).

mod delivery;
mod packets;

use std::time::Duration;

use bytes::Bytes;
use chrono::TimeZone;
use perch_core::model::{
    DeviceCredential, EventNotificationConfig, GatewayAuthMethod, GatewayType, PublicKeyFormat,
};
use perch_core::{RegistryName, Rejection};
use tokio::sync::oneshot;

use super::*;
use crate::mqtt::codec::{Connect, Publish, SubAck, Subscribe, Unsubscribe};

const CREDENTIAL: &str = "PEM-A";

fn identity(id: &str, num_id: u64) -> DeviceIdentity {
    DeviceIdentity {
        registry: RegistryName::parse("n", "projects/p1/locations/us-central1/registries/reg")
            .expect("valid name"),
        device_id: id.parse().expect("valid id"),
        num_id,
    }
}

fn device(id: &str, num_id: u64) -> Device {
    let mut d = Device::new(id.parse().expect("valid id"), num_id);
    d.config.version = 1;
    d.credentials.push(DeviceCredential {
        format: PublicKeyFormat::Es256Pem,
        key: CREDENTIAL.into(),
        expiration_time: None,
    });
    d
}

fn registry() -> Registry {
    Registry {
        event_notification_configs: vec![EventNotificationConfig {
            subfolder_matches: String::new(),
            pubsub_topic_name: "projects/p1/topics/t".into(),
        }],
        ..Registry::new("p1", "us-central1", "reg".parse().expect("valid id"))
    }
}

fn options() -> BridgeOptions {
    BridgeOptions {
        telemetry_per_second: 1.0,
        telemetry_burst: 2.0,
        subscribes_per_second: 1.0,
        subscribe_burst: 3.0,
        command_filters_max: 2,
        ..BridgeOptions::default()
    }
}

/// A session of device `d-1` (num id 1) and the clock it is driven with.
struct Harness {
    session: Session,
    now: Now,
    sessions: Sessions,
    _rx: mpsc::Receiver<Control>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(options(), device("d-1", 1), Some(Duration::from_secs(90)))
    }

    fn gateway(method: GatewayAuthMethod) -> Harness {
        let mut gw = device("d-1", 1);
        gw.gateway_config.gateway_type = GatewayType::Gateway;
        gw.gateway_config.gateway_auth_method = method;
        Harness::with(options(), gw, None)
    }

    fn with(options: BridgeOptions, device: Device, keep_alive: Option<Duration>) -> Harness {
        let now = Now {
            at: Instant::now(),
            wall: Utc
                .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .single()
                .expect("a time"),
        };
        let sessions = Sessions::new(options.command_ack_timeout);
        let (tx, rx) = mpsc::channel(8);
        let handshake = Handshake {
            identity: identity("d-1", 1),
            conn_id: 1,
            tx,
            registry: registry(),
            device,
            credential: CREDENTIAL.into(),
            keep_alive,
            token_expiry: now.at + Duration::from_secs(3600),
        };
        let session = Session::new(&options, sessions.clone(), handshake, now.at);
        Harness {
            session,
            now,
            sessions,
            _rx: rx,
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now.at += by;
        self.now.wall += chrono::Duration::from_std(by).expect("small");
    }

    fn event(&mut self, event: Event) -> Vec<String> {
        self.session
            .handle(event, self.now)
            .iter()
            .map(describe)
            .collect()
    }

    fn packet(&mut self, packet: Packet) -> Vec<String> {
        self.event(Event::Packet(packet))
    }

    fn control(&mut self, control: Control) -> Vec<String> {
        self.event(Event::Control(control))
    }

    fn done(&mut self, outcome: Outcome) -> Vec<String> {
        self.event(Event::Done(outcome))
    }

    /// Moves the clock to the next deadline and fires it.
    fn fire(&mut self, write_deadline: Option<Instant>) -> (Timer, Vec<String>) {
        let (at, timer) = self.session.next_timer(write_deadline);
        self.advance(at.saturating_duration_since(self.now.at));
        (timer, self.event(Event::Timer(timer)))
    }

    fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Vec<String> {
        self.packet(Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: filters.iter().map(|(f, q)| (f.to_string(), *q)).collect(),
        }))
    }

    fn command(&mut self, num_id: u64, subfolder: &str) -> (Vec<String>, Reply) {
        let (reply, rx) = oneshot::channel();
        let actions = self.control(Control::Command {
            num_id,
            subfolder: subfolder.into(),
            data: Bytes::from_static(b"go"),
            reply,
        });
        (actions, Reply(rx))
    }
}

/// The answer of an admin command call.
struct Reply(oneshot::Receiver<Result<(), Rejection>>);

impl Reply {
    /// `None` while unanswered, else `Ok` or the error's status and message.
    fn get(&mut self) -> Option<Result<(), String>> {
        match self.0.try_recv() {
            Ok(r) => Some(r.map_err(|e| format!("{}: {}", e.code.as_str(), e.message))),
            Err(_) => None,
        }
    }
}

fn publish(topic: &str, qos: QoS, payload: &[u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(7),
        payload: Bytes::copy_from_slice(payload),
    })
}

fn describe(action: &Action) -> String {
    match action {
        Action::Send(p) => describe_packet(p),
        Action::SendCommand { packet, ticket } => format!("{} #{ticket}", describe_packet(packet)),
        Action::Run(effect) => describe_effect(effect),
        Action::Close(reason) => match reason.status() {
            None => "close".to_owned(),
            Some((code, message)) => format!("close {}: {message}", code.as_str()),
        },
    }
}

fn describe_packet(packet: &Packet) -> String {
    match packet {
        Packet::PubAck(id) => format!("PUBACK {id}"),
        Packet::SubAck(SubAck {
            packet_id,
            return_codes,
        }) => format!("SUBACK {packet_id} {return_codes:?}"),
        Packet::UnsubAck(id) => format!("UNSUBACK {id}"),
        Packet::Publish(p) => format!(
            "PUBLISH {} qos{} {:?}{} {}",
            p.topic,
            p.qos as u8,
            p.packet_id,
            if p.dup { " dup" } else { "" },
            String::from_utf8_lossy(&p.payload)
        ),
        other => format!("{other:?}"),
    }
}

fn describe_effect(effect: &Effect) -> String {
    match effect {
        Effect::Telemetry {
            identity,
            subfolder,
            ack,
            ..
        } => format!("telemetry {} '{subfolder}' ack {ack:?}", identity.device_id),
        Effect::StoreState { identity, ack, .. } => {
            format!("state {} ack {ack:?}", identity.device_id)
        }
        Effect::LookUpAttach { device, .. } => format!("look up {device}"),
        Effect::LookUpAttachment { num_id, .. } => format!("look up attachment {num_id}"),
        Effect::Record { identity, update } => {
            let what = match update {
                Update::ConfigSent { .. } => "config sent".to_owned(),
                Update::ConfigAcked { version, .. } => format!("config {version} acked"),
                Update::GatewayAccessed { gateway_id, .. } => format!("via {gateway_id}"),
            };
            format!("record {} {what}", identity.device_id)
        }
        Effect::RecordError {
            identity,
            code,
            message,
            ..
        } => format!("error {} {}: {message}", identity.device_id, code.as_str()),
        Effect::Heartbeat { identity, .. } => format!("heartbeat {}", identity.device_id),
    }
}

fn strings(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|s| s.to_string()).collect()
}
