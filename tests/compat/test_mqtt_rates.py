"""Per-device rate limits of the MQTT bridge (SPEC.md §4.6, §4.10; Perch choices in docs/mqtt.md):
state more often than once a second is dropped but acknowledged and recorded as
RESOURCE_EXHAUSTED; telemetry beyond 100 messages/s (burst 200) closes the connection."""

from __future__ import annotations

import pytest

from device_helpers import unique, wait_for_field


def test_state_faster_than_once_a_second_is_dropped_acked_and_recorded(seed):
    device = seed.device(unique("chatty"))
    client = seed.world.connected(device)
    client.publish_acked(device.state_topic, b"first")
    client.publish_acked(device.state_topic, b"second, too soon")  # still PUBACKed
    assert not client.closed
    d = wait_for_field(seed.admin, device.name, lambda d: d.get("lastErrorStatus", {}).get("code") == 8,
                       "lastErrorStatus RESOURCE_EXHAUSTED")
    assert "dropped" in d["lastErrorStatus"]["message"], d
    states = seed.admin.list_states(device.name)
    assert len(states) == 1, states


def test_telemetry_beyond_the_connection_rate_closes_it(seed):
    device = seed.device(unique("flood"))
    client = seed.world.connected(device)
    for i in range(400):
        client.publish(device.events(), f"m{i}".encode(), qos=0)
    client.wait_closed(10, what="the close of a connection flooding telemetry")
    d = wait_for_field(seed.admin, device.name, lambda d: d.get("lastErrorStatus", {}).get("code") == 8,
                       "lastErrorStatus RESOURCE_EXHAUSTED")
    assert "faster than" in d["lastErrorStatus"]["message"], d
