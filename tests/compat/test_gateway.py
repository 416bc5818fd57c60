"""Gateways over MQTT (SPEC.md §4.9, §9 item 6): a gateway connects as itself, attaches devices
(ASSOCIATION_ONLY for bound devices without credentials, DEVICE_AUTH_TOKEN_ONLY with the device's
own JWT), and relays their telemetry, which carries the attached device's identity. A refused
attach gets no PUBACK and a GATEWAY_ATTACHMENT_ERROR on the gateway's errors topic."""

from __future__ import annotations

import json
import time

import pytest

from device_helpers import Seed, assert_telemetry, unique


def gateway(seed: Seed, auth_method: str):
    return seed.device(unique("gw"), gatewayConfig={"gatewayType": "GATEWAY", "gatewayAuthMethod": auth_method})


def bind(seed: Seed, gateway_id: str, device_id: str) -> None:
    seed.admin.ok("POST", f"{seed.registry.name}:bindDeviceToGateway",
                  body={"gatewayId": gateway_id, "deviceId": device_id})


def errors(client) -> list[dict]:
    return [json.loads(m.payload) for m in client.messages if m.topic.endswith("/errors")]


def test_association_only_gateway_relays_a_bound_device_with_its_identity(seed):
    gw = gateway(seed, "ASSOCIATION_ONLY")
    child = seed.device(unique("child"), credentials=[])  # no credentials: it can only come through the gateway
    bind(seed, gw.id, child.id)
    client = seed.world.connected(gw)
    assert client.subscribe(f"/devices/{gw.id}/errors", qos=0) == [0]

    client.publish_acked(f"/devices/{child.id}/attach", b'{"authorization" : ""}')
    payload = b'{"temperature_c": 20.5, "via": "gateway"}'
    client.publish_acked(child.events(), payload)
    got = seed.ps.drain(seed.subs["sensordata"], 1)
    assert_telemetry(got, {payload: child.attributes("")})  # the child's identity, not the gateway's

    # The child's config reaches the gateway, first the current one, then updates.
    assert client.subscribe(child.config_topic, qos=1) == [1]
    client.wait(lambda: any(m.topic == child.config_topic for m in client.messages), 10, "the child's config")
    seed.admin.modify_config(child.name, b'{"fan_on": true}')
    client.wait(lambda: any(m.topic == child.config_topic and m.payload == b'{"fan_on": true}' for m in client.messages),
                10, "the child's config update")
    device = seed.admin.get_device(child.name)
    assert device.get("gatewayConfig", {}).get("lastAccessedGatewayId") == gw.id, device

    # A device that does not exist: no PUBACK, an error on the errors topic, the gateway stays up.
    info = client.publish("/devices/invalid_device_id/attach", b'{"authorization" : ""}', qos=1)
    client.wait(lambda: errors(client), 10, "a GATEWAY_ATTACHMENT_ERROR")
    error = errors(client)[0]
    assert error["error_type"] == "GATEWAY_ATTACHMENT_ERROR", error
    assert error["device_id"] == "invalid_device_id", error
    assert info.mid not in client.pubacked
    assert not client.closed


def test_an_unbound_device_cannot_attach_to_an_association_only_gateway(seed):
    gw = gateway(seed, "ASSOCIATION_ONLY")
    stranger = seed.device(unique("stranger"), credentials=[])
    client = seed.world.connected(gw)
    client.subscribe(f"/devices/{gw.id}/errors", qos=0)
    info = client.publish(f"/devices/{stranger.id}/attach", b"{}", qos=1)
    client.wait(lambda: errors(client), 10, "the attach refusal")
    assert "not bound" in errors(client)[0]["description"]
    time.sleep(0.3)  # a PUBACK would have arrived with the error
    assert info.mid not in client.pubacked
    # Using its topics without an attach closes the gateway's connection.
    client.publish(stranger.events(), b"x", qos=1)
    client.wait_closed(10, what="the close after publishing for an unattached device")


def test_device_auth_token_only_gateway_needs_the_device_jwt(seed):
    gw = gateway(seed, "DEVICE_AUTH_TOKEN_ONLY")
    child = seed.device(unique("child"))
    client = seed.world.connected(gw)
    client.subscribe(f"/devices/{gw.id}/errors", qos=0)
    client.publish(f"/devices/{child.id}/attach", b'{"authorization" : ""}', qos=1)
    client.wait(lambda: errors(client), 10, "the refusal of an attach without a token")
    body = json.dumps({"authorization": child.token()}).encode()
    client.publish_acked(f"/devices/{child.id}/attach", body)
    client.publish_acked(child.state_topic, b"relayed-state")
    states = seed.admin.list_states(child.name)
    assert states and states[0]["binaryData"], states

    # Detach ends it: the child's topics are off limits again.
    client.publish_acked(f"/devices/{child.id}/detach", b"")
    client.publish(child.events(), b"after detach", qos=1)
    client.wait_closed(10, what="the close after publishing for a detached device")


def test_a_device_that_is_not_a_gateway_may_not_attach(seed):
    device = seed.device(unique("plain"))
    other = seed.device(unique("other"), credentials=[])
    client = seed.world.connected(device)
    client.publish(f"/devices/{other.id}/attach", b"{}", qos=1)
    client.wait_closed(10, what="the close after a non-gateway attach")
