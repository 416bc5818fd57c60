//! Table tests: a session driven event by event with a hand-moved clock, no sockets and no
//! runtime. Actions are compared as one line each (`describe`).

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
        project: "p1".into(),
        location: "us-central1".into(),
        id: "reg".parse().expect("valid id"),
        event_notification_configs: vec![EventNotificationConfig {
            subfolder_matches: String::new(),
            pubsub_topic_name: "projects/p1/topics/t".into(),
        }],
        state_notification_topic: String::new(),
        mqtt_state: Default::default(),
        http_state: Default::default(),
        log_level: Default::default(),
        credentials: Vec::new(),
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

#[test]
fn telemetry_is_pubacked_only_once_published() {
    let mut h = Harness::new();
    let cases: [(&str, Packet, Vec<String>); 3] = [
        (
            "qos 1",
            publish("/devices/d-1/events", QoS::AtLeastOnce, b"x"),
            strings(&["telemetry d-1 '' ack Some(7)"]),
        ),
        (
            "qos 0",
            publish("/devices/d-1/events/a/b", QoS::AtMostOnce, b"x"),
            strings(&["telemetry d-1 'a/b' ack None"]),
        ),
        (
            "subfolder",
            publish("/devices/d-1/events/alerts", QoS::AtLeastOnce, b"x"),
            strings(&["telemetry d-1 'alerts' ack Some(7)"]),
        ),
    ];
    for (name, packet, want) in cases {
        h.advance(Duration::from_secs(1));
        assert_eq!(h.packet(packet), want, "{name}");
    }
    let ok = Outcome::Telemetry {
        ack: Some(7),
        result: Ok(()),
    };
    assert_eq!(h.done(ok), strings(&["PUBACK 7"]));
    let qos0 = Outcome::Telemetry {
        ack: None,
        result: Ok(()),
    };
    assert!(h.done(qos0).is_empty());
}

#[test]
fn telemetry_that_cannot_be_routed_closes_with_the_ingest_message() {
    let mut h = Harness::new();
    let failed = Outcome::Telemetry {
        ack: Some(7),
        result: Err(IngestError::NoRoute {
            registry: "reg".into(),
            subfolder: "x".into(),
        }),
    };
    assert_eq!(
        h.done(failed),
        strings(&[
            "close FAILED_PRECONDITION: mqtt: registry `reg` has no event notification config for subfolder 'x'"
        ])
    );
}

#[test]
fn publishes_outside_the_acl_close_the_connection() {
    let cases = [
        (
            "another device's events",
            publish("/devices/d-2/events", QoS::AtLeastOnce, b"x"),
            "close PERMISSION_DENIED: mqtt: device `d-1` may not publish to '/devices/d-2/events'",
        ),
        (
            "another device's state",
            publish("/devices/d-2/state", QoS::AtLeastOnce, b"x"),
            "close PERMISSION_DENIED: mqtt: device `d-1` may not publish to '/devices/d-2/state'",
        ),
        (
            "an unknown topic",
            publish("/devices/d-1/other", QoS::AtMostOnce, b"x"),
            "close PERMISSION_DENIED: mqtt: device `d-1` may not publish to '/devices/d-1/other'",
        ),
        (
            "attach when not a gateway",
            publish("/devices/d-2/attach", QoS::AtLeastOnce, b""),
            "close PERMISSION_DENIED: mqtt: device `d-1` may not attach or detach devices: it is not a gateway",
        ),
        (
            "qos 2",
            publish("/devices/d-1/events", QoS::ExactlyOnce, b"x"),
            "close INVALID_ARGUMENT: mqtt: QoS 2 publishes are not supported",
        ),
        (
            "oversized telemetry",
            publish(
                "/devices/d-1/events",
                QoS::AtLeastOnce,
                &[0; 256 * 1024 + 1],
            ),
            "close INVALID_ARGUMENT: mqtt: the telemetry payload has 262145 bytes; the limit is 262144",
        ),
        (
            "oversized state",
            publish("/devices/d-1/state", QoS::AtLeastOnce, &[0; 64 * 1024 + 1]),
            "close INVALID_ARGUMENT: mqtt: the state payload has 65537 bytes; the limit is 65536",
        ),
    ];
    for (name, packet, want) in cases {
        let mut h = Harness::new();
        assert_eq!(h.packet(packet), strings(&[want]), "{name}");
    }
}

#[test]
fn telemetry_over_the_connection_rate_closes_it() {
    let mut h = Harness::new();
    for _ in 0..2 {
        let out = h.packet(publish("/devices/d-1/events", QoS::AtMostOnce, b"x"));
        assert_eq!(out, strings(&["telemetry d-1 '' ack None"]));
    }
    assert_eq!(
        h.packet(publish("/devices/d-1/events", QoS::AtMostOnce, b"x")),
        strings(&[
            "close RESOURCE_EXHAUSTED: mqtt: the connection sent telemetry faster than 1 messages per second"
        ])
    );
}

#[test]
fn state_faster_than_the_min_interval_is_pubacked_and_recorded() {
    let mut h = Harness::new();
    let state = || publish("/devices/d-1/state", QoS::AtLeastOnce, b"s");
    assert_eq!(h.packet(state()), strings(&["state d-1 ack Some(7)"]));
    let stored = Outcome::State {
        ack: Some(7),
        result: Ok(()),
    };
    assert_eq!(h.done(stored), strings(&["PUBACK 7"]));
    h.advance(Duration::from_millis(500));
    assert_eq!(
        h.packet(state()),
        strings(&[
            "error d-1 RESOURCE_EXHAUSTED: mqtt: state reports faster than one per 1000 ms are dropped",
            "PUBACK 7",
        ])
    );
    h.advance(Duration::from_millis(500));
    assert_eq!(h.packet(state()), strings(&["state d-1 ack Some(7)"]));
    let failed = Outcome::State {
        ack: Some(7),
        result: Err(Rejection::new(ErrorCode::Internal, "disk")),
    };
    assert_eq!(h.done(failed), strings(&["close INTERNAL: mqtt: disk"]));
}

#[test]
fn subscribing_to_config_sends_the_latest_after_the_suback() {
    let cases = [
        (QoS::AtMostOnce, "PUBLISH /devices/d-1/config qos0 None "),
        (
            QoS::AtLeastOnce,
            "PUBLISH /devices/d-1/config qos1 Some(1) ",
        ),
        (
            QoS::ExactlyOnce,
            "PUBLISH /devices/d-1/config qos1 Some(1) ",
        ),
    ];
    for (qos, config) in cases {
        let mut h = Harness::new();
        let granted = qos.min(QoS::AtLeastOnce) as u8;
        assert_eq!(
            h.subscribe(&[("/devices/d-1/config", qos)]),
            vec![
                format!("SUBACK 1 [{granted}]"),
                config.to_owned(),
                "record d-1 config sent".to_owned()
            ],
            "{qos:?}"
        );
    }
}

#[test]
fn a_qos1_config_is_resent_until_pubacked() {
    let mut h = Harness::new();
    h.subscribe(&[("/devices/d-1/config", QoS::AtLeastOnce)]);
    let (timer, out) = h.fire(None);
    assert_eq!(timer, Timer::Config);
    assert_eq!(
        out,
        strings(&[
            "PUBLISH /devices/d-1/config qos1 Some(1) dup ",
            "record d-1 config sent"
        ])
    );
    assert_eq!(
        h.packet(Packet::PubAck(1)),
        strings(&["record d-1 config 1 acked"])
    );
    assert_ne!(h.session.next_timer(None).1, Timer::Config);
}

#[test]
fn only_a_newer_config_is_pushed() {
    let mut h = Harness::new();
    h.subscribe(&[("/devices/d-1/config", QoS::AtMostOnce)]);
    let config = |version: i64| Control::Config {
        num_id: 1,
        config: DeviceConfig {
            version,
            binary_data: format!("v{version}").into_bytes(),
            ..DeviceConfig::default()
        },
    };
    assert_eq!(
        h.control(config(2)),
        strings(&[
            "PUBLISH /devices/d-1/config qos0 None v2",
            "record d-1 config sent"
        ])
    );
    assert!(h.control(config(2)).is_empty());
    assert!(h.control(config(1)).is_empty());
    let other = Control::Config {
        num_id: 9,
        config: DeviceConfig::default(),
    };
    assert!(h.control(other).is_empty());
}

#[test]
fn subscriptions_outside_the_acl_close_or_fail_in_the_suback() {
    let mut h = Harness::new();
    assert_eq!(
        h.subscribe(&[("/devices/d-2/config", QoS::AtLeastOnce)]),
        strings(&[
            "close PERMISSION_DENIED: mqtt: device `d-1` may not subscribe to '/devices/d-2/config'"
        ])
    );
    let lenient = BridgeOptions {
        subscribe_failure_suback: true,
        ..options()
    };
    let mut h = Harness::with(lenient, device("d-1", 1), None);
    assert_eq!(
        h.subscribe(&[
            ("/devices/d-2/config", QoS::AtLeastOnce),
            ("/devices/d-1/errors", QoS::AtLeastOnce),
            ("/devices/d-1/commands/#", QoS::AtLeastOnce),
        ]),
        strings(&["SUBACK 1 [128, 0, 1]"])
    );
}

#[test]
fn subscribes_over_the_rate_close_the_connection() {
    let mut h = Harness::new();
    for _ in 0..3 {
        h.subscribe(&[("/devices/d-1/commands/#", QoS::AtMostOnce)]);
    }
    let unsubscribe = Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        filters: vec!["/devices/d-1/commands/#".into()],
    });
    assert_eq!(
        h.packet(unsubscribe),
        strings(&[
            "close RESOURCE_EXHAUSTED: mqtt: the connection sent SUBSCRIBE and UNSUBSCRIBE faster than 1 per second"
        ])
    );
}

#[test]
fn unsubscribing_stops_configs_and_commands() {
    let mut h = Harness::new();
    h.subscribe(&[
        ("/devices/d-1/config", QoS::AtLeastOnce),
        ("/devices/d-1/commands/#", QoS::AtLeastOnce),
    ]);
    let unsubscribe = Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        filters: vec![
            "/devices/d-1/config".into(),
            "/devices/d-1/commands/#".into(),
        ],
    });
    assert_eq!(h.packet(unsubscribe), strings(&["UNSUBACK 2"]));
    assert_ne!(h.session.next_timer(None).1, Timer::Config);
    let newer = Control::Config {
        num_id: 1,
        config: DeviceConfig {
            version: 5,
            ..DeviceConfig::default()
        },
    };
    assert!(h.control(newer).is_empty());
    let (out, mut reply) = h.command(1, "");
    assert!(out.is_empty());
    assert_eq!(
        reply.get(),
        Some(Err(
            "FAILED_PRECONDITION: The device is not subscribed to the commands topic.".into()
        ))
    );
}

#[test]
fn commands_follow_the_subscribed_filters() {
    let mut h = Harness::new();
    h.subscribe(&[
        ("/devices/d-1/commands/a", QoS::AtLeastOnce),
        ("/devices/d-1/commands/b", QoS::AtMostOnce),
    ]);
    let cases = [
        (
            "a",
            Some("PUBLISH /devices/d-1/commands/a qos1 Some(1) go #1"),
        ),
        (
            "b",
            Some("PUBLISH /devices/d-1/commands/b qos1 Some(2) go #2"),
        ),
        ("c", None),
        ("", None),
    ];
    for (subfolder, want) in cases {
        let (out, mut reply) = h.command(1, subfolder);
        match want {
            Some(line) => {
                assert_eq!(out, strings(&[line]), "{subfolder}");
                assert_eq!(reply.get(), None, "{subfolder}: waits for the PUBACK");
            }
            None => {
                assert!(out.is_empty(), "{subfolder}");
                assert!(matches!(reply.get(), Some(Err(_))), "{subfolder}");
            }
        }
    }
}

#[test]
fn a_qos1_command_is_answered_by_its_puback() {
    let mut h = Harness::new();
    h.subscribe(&[("/devices/d-1/commands/#", QoS::AtLeastOnce)]);
    let (_, mut reply) = h.command(1, "");
    assert!(h.event(Event::Written(vec![1])).is_empty());
    assert_eq!(reply.get(), None, "written is not enough at QoS 1");
    assert!(h.packet(Packet::PubAck(1)).is_empty());
    assert_eq!(reply.get(), Some(Ok(())));
}

#[test]
fn a_qos0_command_is_answered_once_written() {
    let mut h = Harness::new();
    h.subscribe(&[("/devices/d-1/commands/#", QoS::AtMostOnce)]);
    let (out, mut reply) = h.command(1, "x");
    assert_eq!(
        out,
        strings(&["PUBLISH /devices/d-1/commands/x qos0 None go #1"])
    );
    assert_eq!(reply.get(), None);
    h.event(Event::Written(vec![1]));
    assert_eq!(reply.get(), Some(Ok(())));
}

#[test]
fn commands_not_answered_in_time_expire_and_the_connection_stays() {
    let mut h = Harness::new();
    h.subscribe(&[("/devices/d-1/commands/#", QoS::AtLeastOnce)]);
    let (_, mut reply) = h.command(1, "");
    let (timer, out) = h.fire(None);
    assert_eq!((timer, out), (Timer::Command, Vec::new()));
    assert!(matches!(reply.get(), Some(Err(e)) if e.starts_with("DEADLINE_EXCEEDED")));
}

#[test]
fn commands_still_waiting_fail_when_unsent_or_when_the_session_ends() {
    let mut h = Harness::new();
    h.subscribe(&[("/devices/d-1/commands/#", QoS::AtLeastOnce)]);
    let (_, mut unsent) = h.command(1, "");
    let (_, mut waiting) = h.command(1, "");
    h.session.unsent(1);
    assert_eq!(
        unsent.get(),
        Some(Err(
            "UNAVAILABLE: the device is not reading its connection, which is closed".into()
        ))
    );
    assert_eq!(waiting.get(), None);
    h.session.finish();
    assert_eq!(
        waiting.get(),
        Some(Err(
            "UNAVAILABLE: the device disconnected before acknowledging the command".into()
        ))
    );
}

#[test]
fn command_filters_are_capped_per_connection() {
    let mut h = Harness::new();
    assert_eq!(
        h.subscribe(&[
            ("/devices/d-1/commands/a", QoS::AtMostOnce),
            ("/devices/d-1/commands/a", QoS::AtMostOnce),
            ("/devices/d-1/commands/#", QoS::AtMostOnce),
        ]),
        strings(&["SUBACK 1 [0, 0, 0]"])
    );
    assert_eq!(
        h.subscribe(&[("/devices/d-1/commands/b", QoS::AtMostOnce)]),
        strings(&[
            "close RESOURCE_EXHAUSTED: mqtt: the connection subscribed to more than 2 distinct command topics"
        ])
    );
}

#[test]
fn deadlines_close_the_connection_with_their_reason() {
    let cases = [
        (
            None,
            Timer::KeepAlive,
            "close DEADLINE_EXCEEDED: mqtt: SERVER: The connection timed out: no packet within 1.5 times the keep-alive.",
        ),
        (
            Some(Duration::from_secs(10)),
            Timer::Write,
            "close DEADLINE_EXCEEDED: mqtt: SERVER: The device read nothing for 10 s while messages waited to be sent.",
        ),
    ];
    for (write, timer, want) in cases {
        let mut h = Harness::new();
        let write = write.map(|w| h.now.at + w);
        assert_eq!(h.fire(write), (timer, strings(&[want])), "{timer:?}");
    }
    let mut h = Harness::with(options(), device("d-1", 1), None);
    assert_eq!(
        h.fire(None),
        (
            Timer::Idle,
            strings(&[
                "close DEADLINE_EXCEEDED: mqtt: SERVER: The connection was idle for too long."
            ])
        )
    );
    let long = BridgeOptions {
        idle_timeout: Duration::from_secs(7200),
        ..options()
    };
    let mut h = Harness::with(long, device("d-1", 1), None);
    assert_eq!(
        h.fire(None),
        (
            Timer::Token,
            strings(&["close UNAUTHENTICATED: mqtt: SERVER: The authorization token expired."])
        )
    );
    assert_eq!(
        h.event(Event::Timer(Timer::Age)),
        strings(&["close UNAVAILABLE: mqtt: SERVER: The connection reached its maximum age."])
    );
}

#[test]
fn every_packet_moves_the_keep_alive_deadline() {
    let mut h = Harness::new();
    let first = h.session.next_timer(None);
    assert_eq!(first.1, Timer::KeepAlive);
    h.advance(Duration::from_secs(60));
    assert_eq!(
        h.packet(Packet::PingReq),
        strings(&["heartbeat d-1", "PingResp"])
    );
    let next = h.session.next_timer(None);
    assert_eq!(
        (next.0 - first.0, next.1),
        (Duration::from_secs(60), Timer::KeepAlive)
    );
}

#[test]
fn protocol_violations_close_the_connection() {
    let connect = Packet::Connect(Connect {
        protocol_name: "MQTT".into(),
        protocol_level: 4,
        clean_session: true,
        keep_alive: 60,
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
    });
    let server = "close INVALID_ARGUMENT: mqtt: a client may not send server packets";
    let qos2 = "close INVALID_ARGUMENT: mqtt: QoS 2 is not supported";
    let cases = [
        (
            connect,
            "close INVALID_ARGUMENT: mqtt: [MQTT-3.1.0-2] a second CONNECT is a protocol violation",
        ),
        (Packet::PubRec(1), qos2),
        (Packet::PubRel(1), qos2),
        (Packet::PubComp(1), qos2),
        (Packet::PingResp, server),
        (Packet::UnsubAck(1), server),
        (
            Packet::SubAck(SubAck {
                packet_id: 1,
                return_codes: vec![0],
            }),
            server,
        ),
        (Packet::Disconnect, "close"),
    ];
    for (packet, want) in cases {
        let name = format!("{packet:?}");
        let mut h = Harness::new();
        assert_eq!(h.packet(packet), strings(&[want]), "{name}");
    }
}

#[test]
fn control_messages_for_the_own_device_close_or_update() {
    let blocked = {
        let mut d = device("d-1", 1);
        d.blocked = true;
        d
    };
    let disabled = Registry {
        mqtt_state: perch_core::model::MqttState::Disabled,
        ..registry()
    };
    let cases = [
        (
            Control::Kick {
                num_id: 1,
                code: ErrorCode::AlreadyExists,
                message: "SERVER: replaced".into(),
            },
            "close ALREADY_EXISTS: mqtt: SERVER: replaced",
        ),
        (
            Control::DeviceChanged(Box::new(blocked)),
            "close PERMISSION_DENIED: mqtt: SERVER: The device was blocked.",
        ),
        (
            Control::DeviceChanged(Box::new(Device::new("d-1".parse().expect("id"), 1))),
            "close UNAUTHENTICATED: mqtt: SERVER: The credential the device connected with was removed.",
        ),
        (
            Control::RegistryChanged(Box::new(disabled)),
            "close PERMISSION_DENIED: mqtt: SERVER: MQTT was disabled for the registry.",
        ),
    ];
    for (control, want) in cases {
        let mut h = Harness::new();
        assert_eq!(h.control(control), strings(&[want]));
    }
    let mut h = Harness::new();
    assert!(
        h.control(Control::DeviceChanged(Box::new(device("d-1", 1))))
            .is_empty()
    );
    assert!(
        h.control(Control::RegistryChanged(Box::new(registry())))
            .is_empty()
    );
    assert!(
        h.control(Control::AttachmentChanged { num_id: 2 })
            .is_empty()
    );
}

/// A gateway with device `c-2` (num id 2) attached through it, errors subscribed.
fn attached() -> Harness {
    let mut h = Harness::gateway(GatewayAuthMethod::AssociationOnly);
    h.subscribe(&[("/devices/d-1/errors", QoS::AtMostOnce)]);
    assert_eq!(
        h.packet(publish("/devices/c-2/attach", QoS::AtLeastOnce, b"")),
        strings(&["look up c-2"])
    );
    let request = AttachRequest {
        device: "c-2".into(),
        token: None,
        topic: "/devices/c-2/attach".into(),
        packet_id: Some(7),
        ack: Some(7),
    };
    let found = Outcome::AttachLookup {
        request,
        found: Some((Box::new(device("c-2", 2)), true)),
    };
    assert_eq!(h.done(found), strings(&["record c-2 via d-1", "PUBACK 7"]));
    assert_eq!(
        h.sessions.count(),
        1,
        "the attached device is in the session map"
    );
    h
}

#[test]
fn an_attached_device_publishes_and_subscribes_through_the_gateway() {
    let mut h = attached();
    assert_eq!(
        h.packet(publish("/devices/c-2/events", QoS::AtLeastOnce, b"x")),
        strings(&["telemetry c-2 '' ack Some(7)"])
    );
    assert_eq!(
        h.subscribe(&[("/devices/c-2/config", QoS::AtMostOnce)]),
        strings(&[
            "SUBACK 1 [0]",
            "PUBLISH /devices/c-2/config qos0 None ",
            "record c-2 config sent"
        ])
    );
    assert_eq!(
        h.packet(publish("/devices/c-2/attach", QoS::AtLeastOnce, b"")),
        strings(&["PUBACK 7"]),
        "attaching again is a no-op"
    );
}

#[test]
fn refused_attaches_answer_on_the_errors_topic_only() {
    let mut h = Harness::gateway(GatewayAuthMethod::AssociationOnly);
    h.subscribe(&[("/devices/d-1/errors", QoS::AtMostOnce)]);
    let bad = h.packet(publish("/devices/Bad Id/attach", QoS::AtLeastOnce, b""));
    assert_eq!(bad.len(), 1);
    assert!(
        bad[0].starts_with("PUBLISH /devices/d-1/errors qos0 None"),
        "{bad:?}"
    );
    assert!(bad[0].contains("is not a valid device id"), "{bad:?}");
    h.packet(publish("/devices/c-2/attach", QoS::AtLeastOnce, b""));
    let request = AttachRequest {
        device: "c-2".into(),
        token: None,
        topic: "/devices/c-2/attach".into(),
        packet_id: Some(7),
        ack: Some(7),
    };
    for (found, reason) in [
        (
            Some((Box::new(device("c-2", 2)), false)),
            "is not bound to gateway",
        ),
        (None, "does not exist in registry `reg`"),
    ] {
        let outcome = Outcome::AttachLookup {
            request: request.clone(),
            found,
        };
        let out = h.done(outcome);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].contains("GATEWAY_ATTACHMENT_ERROR") && out[0].contains(reason),
            "{out:?}"
        );
    }
    assert_eq!(h.sessions.count(), 0);
}

#[test]
fn detaching_ends_what_the_device_may_do() {
    let mut h = attached();
    assert_eq!(
        h.packet(publish("/devices/c-2/detach", QoS::AtLeastOnce, b"")),
        strings(&["PUBACK 7"])
    );
    assert_eq!(h.sessions.count(), 0);
    assert_eq!(
        h.packet(publish("/devices/c-2/events", QoS::AtLeastOnce, b"x")),
        strings(&[
            "close PERMISSION_DENIED: mqtt: device `d-1` may not publish to '/devices/c-2/events'"
        ])
    );
}

#[test]
fn revoked_attachments_are_detached_with_a_message() {
    let mut h = attached();
    let kick = Control::Kick {
        num_id: 2,
        code: ErrorCode::NotFound,
        message: "it was deleted".into(),
    };
    let out = h.control(kick);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].starts_with("PUBLISH /devices/d-1/errors"), "{out:?}");
    assert!(
        out[0].contains("device `c-2` was detached: it was deleted"),
        "{out:?}"
    );
    assert_eq!(h.sessions.count(), 0);
}

#[test]
fn attachments_are_rechecked_after_admin_changes() {
    let mut h = attached();
    assert_eq!(
        h.control(Control::AttachmentChanged { num_id: 2 }),
        strings(&["look up attachment 2"])
    );
    let still_bound = Outcome::Attachment {
        num_id: 2,
        found: Ok((Box::new(device("c-2", 2)), true)),
    };
    assert!(h.done(still_bound).is_empty());
    let mut gw = device("d-1", 1);
    gw.gateway_config.gateway_type = GatewayType::Gateway;
    gw.gateway_config.gateway_auth_method = GatewayAuthMethod::DeviceAuthTokenOnly;
    assert_eq!(
        h.control(Control::DeviceChanged(Box::new(gw))),
        strings(&["look up attachment 2"])
    );
    let unreadable = Outcome::Attachment {
        num_id: 2,
        found: Err("not found".into()),
    };
    let out = h.done(unreadable);
    assert!(
        out[0].contains("was detached: it could not be read: not found"),
        "{out:?}"
    );
    assert!(
        h.control(Control::AttachmentChanged { num_id: 2 })
            .is_empty()
    );
}

#[test]
fn ties_between_deadlines_go_to_the_first_timer() {
    let mut timers = [
        Timer::Write,
        Timer::Token,
        Timer::KeepAlive,
        Timer::Idle,
        Timer::Config,
        Timer::Command,
        Timer::Age,
    ];
    timers.sort();
    assert_eq!(timers[0], Timer::Age);
    let h = Harness::new();
    let at = h.session.next_timer(None).0;
    assert_eq!(h.session.next_timer(Some(at)).1, Timer::KeepAlive);
}

#[test]
fn bookkeeping_updates_apply_to_the_device() {
    let at = Utc
        .with_ymd_and_hms(2026, 1, 2, 0, 0, 0)
        .single()
        .expect("a time");
    let mut d = device("d-1", 1);
    d.config.version = 3;
    Update::ConfigAcked { version: 2, at }.apply(&mut d);
    assert_eq!(
        (d.config.device_ack_time, d.last_config_ack_time),
        (None, Some(at))
    );
    Update::ConfigAcked { version: 3, at }.apply(&mut d);
    assert_eq!(d.config.device_ack_time, Some(at));
    Update::ConfigSent { at }.apply(&mut d);
    assert_eq!(d.last_config_send_time, Some(at));
    Update::GatewayAccessed {
        gateway_id: "gw".into(),
        at,
    }
    .apply(&mut d);
    assert_eq!(d.gateway_config.last_accessed_gateway_id, "gw");
}
