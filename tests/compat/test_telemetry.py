"""The telemetry sink (docs/telemetry.md) against a real `perch serve`: a `perch-sink-…` subscription, made with
Google's Pub/Sub client, feeds the SQLite store; telemetry a device streams over MQTT is queryable through
`GET /v1/projects/P/telemetry` with the trusted attributes the bridge set (never the payload's claims); the store
survives a restart, and a replay (seek) adds no duplicates.

Fixed waits: none; every wait polls the query API with a deadline."""

from __future__ import annotations

import datetime as dt
import json
import queue
import threading

import pytest
import requests

from device_helpers import AdminRest, assert_error, unique, wait_until
from pubsub_helpers import REQUEST_TIMEOUT

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


def test_the_store_survives_a_restart_and_a_replay_adds_no_duplicates(private_ps):
    ps = private_ps
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


def test_the_dashboard_is_served_and_its_live_feed_streams_new_points_and_anomalies(seed):
    project = seed.world.project
    base = seed.world.server.admin_url.rstrip("/")
    page = requests.get(f"{base}/dashboard", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text[:200]
    for asset, kind in (("uPlot.iife.min.js", "javascript"), ("uPlot.min.css", "css"), ("dashboard.js", "javascript")):
        assert asset in page.text, asset
        r = requests.get(f"{base}/dashboard/{asset}", timeout=10)
        assert r.status_code == 200 and kind in r.headers["content-type"] and len(r.content) > 500, asset

    seed.ps.subscriber.create_subscription(
        request={"name": f"projects/{project}/subscriptions/perch-sink-temperature",
                 "topic": f"projects/{project}/topics/temperature"},
        timeout=REQUEST_TIMEOUT)
    device, other = seed.device(unique("pi")), seed.device(unique("pi"))
    events: queue.Queue = queue.Queue()
    stream = requests.get(f"{base}/v1/projects/{project}/telemetry:watch", params={"deviceId": device.id},
                          stream=True, timeout=30)
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")

    expected = 23  # 22 points and one anomaly

    def read() -> None:
        """Reads until every expected event is in (closing a stream another thread reads blocks until the next
        keep-alive)."""
        event, count = None, 0
        # chunk_size=None: each chunk as it arrives (a fixed size would sit on the last events).
        for line in stream.iter_lines(chunk_size=None, decode_unicode=True):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                events.put((event, json.loads(line[5:])))
                count += 1
                if count == expected:
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        seed.world.connected(other).publish_acked(other.events("temperature"), b'{"temperature_c": 1.0}')
        client = seed.world.connected(device)
        for i in range(21):
            client.publish_acked(device.events("temperature"), json.dumps({"temperature_c": 4.0 + i % 2 / 20}).encode())
        client.publish_acked(device.events("temperature"), b'{"temperature_c": 85.0}')
        got = [events.get(timeout=15) for _ in range(expected)]
    finally:
        reader.join(20)
        stream.close()
    kinds = [kind for kind, _ in got]
    assert kinds.count("point") == 22 and kinds.count("anomaly") == 1, kinds
    assert {body["deviceId"] for _, body in got} == {device.id}, "the other device's point was not filtered out"
    anomaly = next(body for kind, body in got if kind == "anomaly")
    assert anomaly["value"] == 85.0 and anomaly["field"] == "temperature_c"


def test_the_live_feed_needs_the_admin_token_and_the_page_does_not(server_factory):
    server = server_factory(dev=False)
    base = server.admin_url.rstrip("/")
    assert requests.get(f"{base}/dashboard", timeout=10).status_code == 200
    refused = requests.get(f"{base}/v1/projects/p/telemetry:watch", timeout=10)
    assert_error(refused, 401, "UNAUTHENTICATED")
    ok = requests.get(f"{base}/v1/projects/p/telemetry", headers={"Authorization": f"Bearer {server.token}"},
                      timeout=10)
    assert ok.status_code == 200 and ok.json() == {"points": []}, ok.text


def metric(text: str, name: str, **labels) -> float:
    """The value of one series in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{want}}}" if want else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_count_connections_events_and_sink_rows(seed):
    base = seed.world.server.admin_url.rstrip("/")
    before = requests.get(f"{base}/metrics", timeout=10)
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain"), before.text[:200]
    project = seed.world.project
    seed.ps.subscriber.create_subscription(
        request={"name": f"projects/{project}/subscriptions/perch-sink-temperature",
                 "topic": f"projects/{project}/topics/temperature"},
        timeout=REQUEST_TIMEOUT)
    device = seed.device(unique("pi"))
    client = seed.world.connected(device)
    for i in range(3):
        client.publish_acked(device.events("temperature"), json.dumps({"temperature_c": 20 + i}).encode())
    wait_points(seed.admin, project, 3, "the readings in the sink", deviceId=device.id)
    after = requests.get(f"{base}/metrics", timeout=10).text
    grew = lambda name, by, **labels: metric(after, name, **labels) - metric(before.text, name, **labels) >= by  # noqa
    assert grew("perch_mqtt_connects_total", 1, result="accepted"), after
    assert grew("perch_device_events_total", 3, bridge="mqtt"), after
    assert grew("perch_pubsub_messages_published_total", 3), after
    assert grew("perch_sink_rows_total", 3), after
    assert metric(after, "perch_mqtt_sessions") >= 1, after
    assert "perch_store_group_commit_writes" in after, after


def test_metrics_need_the_admin_token(server_factory):
    server = server_factory(dev=False)
    base = server.admin_url.rstrip("/")
    assert_error(requests.get(f"{base}/metrics", timeout=10), 401, "UNAUTHENTICATED")
    ok = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {server.token}"}, timeout=10)
    assert ok.status_code == 200, ok.text
