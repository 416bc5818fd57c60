"""The telemetry sink (docs/telemetry.md) against a real `perch serve`: a `perch-sink-…` subscription, made with
Google's Pub/Sub client, feeds the SQLite store; telemetry a device streams over MQTT is queryable through
`GET /v1/projects/P/telemetry` with the trusted attributes the bridge set (never the payload's claims); the store
survives a restart, and a replay (seek) adds no duplicates.

Fixed waits: none; every wait polls the query API with a deadline."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from device_helpers import AdminRest, assert_error, unique, wait_until
from pubsub_helpers import REQUEST_TIMEOUT, PubSub

pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")


def points(admin: AdminRest, project: str, **params) -> list[dict]:
    return admin.ok("GET", f"projects/{project}/telemetry", params=params)["points"]


def wait_points(admin: AdminRest, project: str, count: int, what: str, **params) -> list[dict]:
    return wait_until(lambda: (lambda got: got if len(got) >= count else None)(points(admin, project, **params)),
                      15, what, interval=0.1)


def test_streamed_temperatures_are_kept_with_trusted_attributes_and_queryable(seed):
    project = seed.world.project
    topic = f"projects/{project}/topics/temperature"
    seed.ps.subscriber.create_subscription(
        request={"name": f"projects/{project}/subscriptions/perch-sink-temperature", "topic": topic},
        timeout=REQUEST_TIMEOUT)
    device, other = seed.device(unique("pi")), seed.device(unique("pi"))
    client = seed.world.connected(device)
    for i, t in enumerate([20.5, 21.0, 21.5]):
        body = {"device_id": "spoofed", "temperature_c": t, "sensor_id": "28-0000075d1a2b", "n": i}
        client.publish_acked(device.events("temperature"), json.dumps(body).encode())
    seed.world.connected(other).publish_acked(other.events("temperature"), b'{"temperature_c": 5.0}')

    got = wait_points(seed.admin, project, 3, "three stored readings", deviceId=device.id)
    assert [p["json"]["temperature_c"] for p in got] == [20.5, 21.0, 21.5], got
    for p in got:
        assert p["deviceId"] == device.id and p["json"]["device_id"] == "spoofed"
        assert p["deviceNumId"] == str(device.num_id)
        assert p["deviceRegistryId"] == seed.registry.id and p["deviceRegistryLocation"] == seed.registry.location
        assert p["subFolder"] == "temperature" and p["topic"] == topic
        assert p["attributes"]["projectId"] == project
    times = [p["publishTime"] for p in got]
    assert times == sorted(times)

    assert len(wait_points(seed.admin, project, 4, "both devices' readings")) == 4
    assert [p["json"]["temperature_c"] for p in points(seed.admin, project, deviceId=device.id, pageSize=1)] == [21.5]
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
    assert points(seed.admin, project, since=future) == []
    assert points(seed.admin, project, deviceId=device.id, until=got[1]["publishTime"]) == got[:1]
    assert points(seed.admin, project, registryId="NoSuchRegistry") == []
    bad = seed.admin.request("GET", f"projects/{project}/telemetry", params={"since": "yesterday"})
    assert "RFC 3339" in assert_error(bad, 400, "INVALID_ARGUMENT")


@pytest.fixture
def private(server_factory, project, monkeypatch):
    server = server_factory(dev=True)
    ps = PubSub(server, project, monkeypatch)
    yield ps
    ps.close()


def test_the_store_survives_a_restart_and_a_replay_adds_no_duplicates(private):
    ps = private
    topic = ps.create_topic(unique("readings"))
    sink = ps.create_subscription("perch-sink-readings", topic)
    admin = lambda: AdminRest(ps.server.admin_url)  # noqa: E731 (the port changes on restart)
    readings = [(json.dumps({"temperature_c": 18 + i}).encode(), {"deviceId": f"pi-{i % 2}"}) for i in range(6)]
    ids = ps.publish(topic, readings)
    stored = wait_points(admin(), ps.project, 6, "six stored messages")
    assert sorted(p["messageId"] for p in stored) == sorted(ids)

    ps.server.restart()
    ps.connect(ps.server)
    assert len(points(admin(), ps.project)) == 6
    assert [p["json"]["temperature_c"] for p in points(admin(), ps.project, deviceId="pi-1")] == [19, 21, 23]

    # Replay everything into the sink, then a marker: once the marker is stored, the replay was too.
    ps.subscriber.seek(request={"subscription": sink, "time": dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)},
                       timeout=REQUEST_TIMEOUT)
    ps.publish(topic, [(b"marker", {"deviceId": "marker"})])
    wait_points(admin(), ps.project, 1, "the marker after the replay", deviceId="marker")
    assert len(points(admin(), ps.project)) == 7, "the replayed messages were stored twice"


def test_a_sensor_glitch_among_steady_readings_is_flagged_for_its_device_only(seed):
    project = seed.world.project
    seed.ps.subscriber.create_subscription(
        request={"name": f"projects/{project}/subscriptions/perch-sink-temperature",
                 "topic": f"projects/{project}/topics/temperature"},
        timeout=REQUEST_TIMEOUT)
    fridge, other = seed.device(unique("pi")), seed.device(unique("pi"))
    fridge_client, other_client = seed.world.connected(fridge), seed.world.connected(other)
    wobble = [0.0, 0.06, -0.06, 0.12, -0.1]
    for i in range(30):  # 30 steady readings each: the models warm up on 20
        for device, client, base in ((fridge, fridge_client, 4.0), (other, other_client, 21.0)):
            body = {"temperature_c": base + wobble[i % 5], "sensor_id": "28-0000075d1a2b"}
            client.publish_acked(device.events("temperature"), json.dumps(body).encode())
    # A DS18B20 that reads 85 °C has lost power mid-conversion: not a real temperature.
    fridge_client.publish_acked(fridge.events("temperature"), b'{"temperature_c": 85.0, "sensor_id": "28-0000075d1a2b"}')
    wait_points(seed.admin, project, 31, "the fridge's 31 readings", deviceId=fridge.id)
    assert len(wait_points(seed.admin, project, 30, "the other Pi's readings", deviceId=other.id)) == 30

    found = seed.admin.ok("GET", f"projects/{project}/anomalies")["anomalies"]
    assert len(found) == 1, found
    a = found[0]
    assert (a["deviceId"], a["field"], a["value"]) == (fridge.id, "temperature_c", 85.0), a
    assert a["deviceRegistryId"] == seed.registry.id and a["subFolder"] == "temperature"
    assert abs(a["mean"] - 4.0) < 0.1 and a["z"] > 4, a
    glitch = points(seed.admin, project, deviceId=fridge.id, pageSize=1)[0]
    assert glitch["messageId"] == a["messageId"] and glitch["publishTime"] == a["publishTime"]
    assert seed.admin.ok("GET", f"projects/{project}/anomalies", params={"deviceId": other.id})["anomalies"] == []
