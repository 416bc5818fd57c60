//! Table tests of what reaches the device or ends its session: commands, deadlines, control
//! messages, gateways.

use super::*;

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

/// `out` is one GATEWAY_ATTACHMENT_ERROR on the gateway's errors topic that says `what`.
fn one_error(out: &[String], what: &str) {
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].starts_with("PUBLISH /devices/d-1/errors qos0 None"),
        "{out:?}"
    );
    assert!(out[0].contains("GATEWAY_ATTACHMENT_ERROR"), "{out:?}");
    assert!(out[0].contains(what), "{what}: {out:?}");
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
    one_error(&bad, "is not a valid device id");
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
        one_error(&h.done(outcome), reason);
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
    one_error(
        &h.control(kick),
        "device `c-2` was detached: it was deleted",
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
    one_error(
        &h.done(unreadable),
        "was detached: it could not be read: not found",
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
