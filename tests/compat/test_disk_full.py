"""A full disk (issue 12, "Disk full"): with the data dir on a small tmpfs, filling it makes publishes fail with a
clear, retryable error — Pub/Sub answers RESOURCE_EXHAUSTED or UNAVAILABLE, an MQTT QoS 1 publish gets no PUBACK and
its connection is closed — the server keeps serving, nothing that was acknowledged is lost, and once space returns
publishing works again, also after a restart (so neither the log nor redb was corrupted).

Needs root (to mount the tmpfs); skipped with the reason printed otherwise. `.ci/run` runs as root."""

from __future__ import annotations

import os
import subprocess
import time

import grpc
import pytest
import requests
from google.api_core import exceptions as gexc

from conftest import PERCH_BIN, _shutdown, _LIVE_SERVERS
from device_helpers import DeviceWorld, Seed, unique, wait_until
from perch_server import PerchServer
from pubsub_helpers import PubSub

DISK_BYTES = 64 * 1024 * 1024
HEADROOM_BYTES = 3 * 1024 * 1024  # free space left once the ballast is written
CHUNK = 128 * 1024  # one Pub/Sub message
BATCH = 4  # messages per Publish: 512 KiB


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path, leave: int) -> None:
    """Writes zeros into `path` until only `leave` bytes of its file system are free."""
    st = os.statvfs(path.parent)
    free = st.f_bavail * st.f_frsize
    with open(path, "wb") as f:
        block = b"\0" * (1024 * 1024)
        remaining = max(0, free - leave)
        while remaining > 0:
            n = min(len(block), remaining)
            f.write(block[:n])
            remaining -= n
        f.flush()
        os.fsync(f.fileno())


def healthz(server) -> int:
    return requests.get(server.admin_url.rstrip("/") + "/healthz", timeout=5).status_code


def test_a_full_disk_refuses_publishes_cleanly_loses_nothing_and_recovers(small_disk, tmp_path, project, monkeypatch):
    server = PerchServer(PERCH_BIN, small_disk / "data", tmp_path / "perch.log", dev=True)
    _LIVE_SERVERS.append(server)
    ps = None
    world = None
    try:
        server.start()
        ps = PubSub(server, project, monkeypatch)
        world = DeviceWorld(server, project, ps)
        seed = Seed.create(world)
        topic = ps.create_topic("fill")
        sub = ps.create_subscription("fill-sub", topic)
        device = seed.device(unique("pi"))
        client = world.connected(device)
        client.publish_acked(device.events(), b"before the disk filled")

        fill(small_disk / "ballast", HEADROOM_BYTES)

        # Pub/Sub: publish until the disk refuses; every answered publish is acknowledged data.
        acked: set[bytes] = set()
        refusal = None
        for i in range(2 * HEADROOM_BYTES // (CHUNK * BATCH) + 8):
            batch = [{"data": f"{i}-{j}-".encode().ljust(CHUNK, b"x")} for j in range(BATCH)]
            try:
                ps.publish_raw(topic, batch)
            except gexc.GoogleAPICallError as e:
                refusal = e
                break
            acked.update(m["data"] for m in batch)
        assert refusal is not None, "publishing 2x the free space never failed"
        assert refusal.grpc_status_code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE), (
            f"a full disk must be RESOURCE_EXHAUSTED or UNAVAILABLE, got {refusal.grpc_status_code}: {refusal}")
        assert acked, "nothing was acknowledged before the disk filled"

        # What the refused batch would have needed may still be free: take the rest.
        fill(small_disk / "ballast-rest", 0)

        # MQTT: a QoS 1 publish gets no PUBACK and the connection is closed.
        info = client.publish(device.events(), b"y" * 200_000, qos=1)
        client.wait_closed(15, what="the close of a connection whose publish could not be stored")
        assert info.mid not in client.pubacked, "a publish that could not be stored was PUBACKed"

        # The registry (redb) refuses writes too, with a retryable error, and keeps serving reads.
        refused = seed.admin.request("POST", f"{seed.registry.name}/devices",
                                     body={"id": unique("late"), "metadata": {f"pad{i}": "p" * 30_000 for i in range(8)}})
        assert refused.status_code in (429, 503), f"device create on a full disk: {refused.status_code} {refused.text}"
        assert seed.admin.get_device(device.name)["id"] == device.id
        assert healthz(server) == 200
        server.assert_running()

        # Space returns: publishing works again without a restart.
        (small_disk / "ballast").unlink()
        (small_disk / "ballast-rest").unlink()
        again = b"after space returned".ljust(CHUNK, b"z")

        def publish_again():
            try:
                ps.publish_raw(topic, [{"data": again}])
                return True
            except gexc.GoogleAPICallError:
                return False
        wait_until(publish_again, 15, "a publish to succeed once space returned", interval=0.5)
        acked.add(again)
        later = seed.device(unique("later"))  # the registry writes again without a restart
        world.connected(later).publish_acked(later.events(), b"a device created after space returned")
        client2 = world.connected(device)
        client2.publish_acked(device.events(), b"mqtt after space returned")

        # Nothing acknowledged is lost, and the data survives a restart (the log and redb are intact).
        ps.close()
        world.close()
        server.stop()
        server.start()
        ps.connect(server)
        got = {bytes(r.message.data) for r in ps.pull_until(sub, len(acked), timeout=30, what="acked messages")}
        missing = acked - got
        assert not missing, f"{len(missing)} acknowledged messages were lost"
        sensordata = {bytes(r.message.data) for r in ps.pull_until(seed.subs["sensordata"], 3, timeout=15)}
        assert {b"before the disk filled", b"mqtt after space returned",
                b"a device created after space returned"} <= sensordata
    finally:
        if world is not None:
            world.close()
        if ps is not None:
            ps.close()
        _shutdown(server)
