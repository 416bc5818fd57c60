//! Table tests of what the device sends: publishes, subscriptions, configs, protocol errors.

use super::*;

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
