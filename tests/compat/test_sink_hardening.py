"""Telemetry sink hardening (issue 12) against a real `perch serve`: one device's readings can never stop the sink
for the others, also across a restart; one message cannot make unbounded model series; the store's files are
owner-only (docs/telemetry.md).

Fixed waits: none; every wait polls the query API (or the store) with a deadline."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import stat

import pytest
import requests

from device_helpers import AdminRest, DeviceWorld, Seed, unique, wait_until
from pubsub_helpers import PubSub, REQUEST_TIMEOUT
from test_telemetry import metric, points

pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")

# crates/perch-sink: model.rs MODEL_FIELDS_PER_MESSAGE_MAX, store.rs SERIES_PER_DEVICE_MAX
MODEL_FIELDS_PER_MESSAGE_MAX = 64
SERIES_PER_DEVICE_MAX = 256
ALL = {"pageSize": 10_000}
# What once overflowed a model's variance to inf and then NaN, which SQLite stores as NULL.
POISON = (b'{"t":21}', b'{"t":1e308}', b'{"t":-1e308}')


@pytest.fixture
def private_seed(bridge_server_factory, project, monkeypatch):
    """The seed setup on a bridge server of the test's own (for restarts)."""
    server = bridge_server_factory()
    ps = PubSub(server, project, monkeypatch)
    world = DeviceWorld(server, project, ps)
    yield Seed.create(world)
    world.close()
    ps.close()


def reconnect(seed: Seed) -> None:
    """After a restart (new ports): fresh admin and Pub/Sub clients."""
    seed.world.admin.close()
    seed.world.admin = AdminRest(seed.world.server.admin_url)
    seed.ps.connect(seed.world.server)


def count(seed: Seed, device) -> int:
    return len(points(seed.admin, seed.world.project, deviceId=device.id, **ALL))


def wait_count(seed: Seed, device, want: int, what: str) -> None:
    wait_until(lambda: count(seed, device) >= want, 20, what, interval=0.2)
    assert count(seed, device) == want, what


def metrics(seed: Seed) -> str:
    return requests.get(f"{seed.world.server.admin_url.rstrip('/')}/metrics", timeout=10).text


def readings(device, n: int) -> list[tuple[bytes, dict]]:
    return [(json.dumps({"t": 20 + i % 3}).encode(), device.attributes("temperature")) for i in range(n)]


def test_one_device_overflowing_its_model_stops_no_telemetry_of_others_also_after_a_restart(private_seed):
    seed = private_seed
    project = seed.world.project
    topic = f"projects/{project}/topics/temperature"
    hostile, other = seed.device(unique("pi")), seed.device(unique("pi"))
    client = seed.world.connected(hostile)
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    for body in POISON + tuple(json.dumps({"t": 21 + i / 10}).encode() for i in range(5)):
        client.publish_acked(hostile.events("temperature"), body)
    seed.ps.publish(topic, readings(other, 1000))

    # The sink starts now and is sought back over all of it, so the poison and the other device's next 1,000
    # messages arrive in the same pulls (a live sink might pull them apart).
    sink = seed.ps.create_subscription("perch-sink-temperature", topic)
    seed.ps.subscriber.seek(request={"subscription": sink, "time": since}, timeout=REQUEST_TIMEOUT)
    wait_count(seed, other, 1000, "the other device's 1,000 messages")
    wait_count(seed, hostile, 8, "the hostile device's three messages and its five normal ones")
    assert metric(metrics(seed), "perch_sink_series_restarts_total") >= 2

    seed.world.server.restart()
    reconnect(seed)
    assert (count(seed, other), count(seed, hostile)) == (1000, 8), "lost or duplicated across the restart"
    client = seed.world.connected(hostile)
    for i in range(3):
        client.publish_acked(hostile.events("temperature"), json.dumps({"t": 21}).encode())
    seed.ps.publish(topic, readings(other, 1000))
    wait_count(seed, other, 2000, "the other device's next 1,000 messages after the restart")
    wait_count(seed, hostile, 11, "the hostile device's readings after the restart")
    assert seed.admin.ok("GET", f"projects/{project}/anomalies", params={"deviceId": other.id})["anomalies"] == []


def series_of(server, device) -> int:
    """Model series the sink keeps for `device` (read-only, next to the running server: docs/telemetry.md)."""
    path = server.data_dir / "telemetry.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM series WHERE device_key LIKE ?", (f"%/{device.id}",)).fetchone()[0]


def test_a_message_with_thousands_of_fields_is_stored_whole_but_models_stay_bounded(seed):
    project = seed.world.project
    seed.ps.create_subscription("perch-sink-temperature", f"projects/{project}/topics/temperature")
    device = seed.device(unique("pi"))
    client = seed.world.connected(device)
    before = metrics(seed)

    wide = {f"f{i:05}": i for i in range(3000)}
    client.publish_acked(device.events("temperature"), json.dumps(wide).encode())
    [point] = wait_until(lambda: points(seed.admin, project, deviceId=device.id), 15, "the wide message")
    assert point["json"] == wide, "the row keeps every field"
    server = seed.world.server
    wait_until(lambda: series_of(server, device) == MODEL_FIELDS_PER_MESSAGE_MAX, 15, "the capped series")
    unmodelled = metric(metrics(seed), "perch_sink_fields_unmodelled_total") - metric(
        before, "perch_sink_fields_unmodelled_total")
    assert unmodelled >= 3000 - MODEL_FIELDS_PER_MESSAGE_MAX

    # Field names that keep changing: the device keeps its newest series, never more than the cap.
    messages = SERIES_PER_DEVICE_MAX // MODEL_FIELDS_PER_MESSAGE_MAX + 1
    for m in range(messages):
        fresh = {f"g{m}_{i:03}": i for i in range(MODEL_FIELDS_PER_MESSAGE_MAX)}
        client.publish_acked(device.events("temperature"), json.dumps(fresh).encode())
    wait_until(lambda: len(points(seed.admin, project, deviceId=device.id)) == messages + 1, 15, "every message")
    assert series_of(server, device) == SERIES_PER_DEVICE_MAX
    assert metric(metrics(seed), "perch_sink_series_evicted_total") >= 2 * MODEL_FIELDS_PER_MESSAGE_MAX


def test_the_store_and_its_wal_and_shm_are_owner_only(private_seed):
    seed = private_seed
    project = seed.world.project
    seed.ps.create_subscription("perch-sink-temperature", f"projects/{project}/topics/temperature")
    device = seed.device(unique("pi"))
    seed.world.connected(device).publish_acked(device.events("temperature"), b'{"t": 21}')
    wait_until(lambda: points(seed.admin, project, deviceId=device.id), 15, "the reading")
    data = seed.world.server.data_dir
    for name in ("telemetry.sqlite", "telemetry.sqlite-wal", "telemetry.sqlite-shm"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name

    # A file an older version left world-readable is narrowed at the next start.
    server = seed.world.server
    server.stop()
    (data / "telemetry.sqlite").chmod(0o644)
    server.start()
    assert stat.S_IMODE((data / "telemetry.sqlite").stat().st_mode) == 0o600
