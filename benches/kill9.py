#!/usr/bin/env python3
"""kill -9 campaign: acknowledged data must survive SIGKILL at any moment (issue 12).

Each cycle starts `perch serve --dev` on the same data dir, connects 100 devices over MQTT/TLS (JWT), and runs
three loads at once: every device publishes QoS 1 telemetry (routed to topic `kill9`), a Pub/Sub publisher
(google-cloud-pubsub) publishes to the same topic, and a StreamingPull subscriber acks whatever arrives. At a
random moment the server gets SIGKILL; the cycle ends and the next one restarts it. After the last cycle a clean
server drains the subscription.

Checked at the end: every message the server acknowledged (PUBACK, or a publish future that resolved) was
received at least once ("lost" must be 0), and every received body is intact (each carries a digest of itself).
Duplicates (redeliveries of messages whose ack died with the server) are allowed and counted.

Run from the repository root with the compat venv:
    /root/.cache/perch-venv/bin/python benches/kill9.py [--cycles 20] [--devices 100] [--perch target/debug/perch]
Exit status 1 when anything acknowledged was lost or a body was corrupt. Reuses tests/compat's helpers.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import logging
import os
import random
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "compat"))
warnings.filterwarnings("ignore", category=FutureWarning)  # google-api-core's Python-version notice

from device_helpers import DeviceWorld  # noqa: E402
from pubsub_helpers import PubSub  # noqa: E402
from perch_server import PerchServer  # noqa: E402

PROJECT = "kill9"
TOPIC_ID = "kill9"
MQTT_PER_DEVICE_HZ = 10.0  # well under the 100/s per-connection telemetry limit
PUBSUB_HZ = 500.0
DRAIN_QUIET_SECONDS = 5.0
DRAIN_DEADLINE_SECONDS = 120.0


class Env:
    """What PubSub expects of pytest's monkeypatch."""

    @staticmethod
    def setenv(name: str, value: str) -> None:
        os.environ[name] = value


def body(tag: str) -> bytes:
    """A message body that proves itself intact: its tag and a digest of the tag."""
    return f"{tag}:{hashlib.sha256(tag.encode()).hexdigest()[:16]}".encode()


def tag_of(data: bytes) -> str | None:
    """The tag of an intact body, None for a corrupt one."""
    tag, _, digest = data.decode(errors="replace").rpartition(":")
    return tag if tag and body(tag) == data else None


class Ledger:
    """What the server acknowledged and what the subscriber received, across cycles (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked_mqtt: set[str] = set()
        self.acked_pubsub: set[str] = set()
        self.received: collections.Counter[str] = collections.Counter()
        self.corrupt: list[bytes] = []

    def receive(self, data: bytes) -> None:
        tag = tag_of(data)
        with self.lock:
            if tag is None:
                self.corrupt.append(data)
            else:
                self.received[tag] += 1

    def acked(self) -> set[str]:
        with self.lock:
            return self.acked_mqtt | self.acked_pubsub


def new_server(data_dir: Path, binary: str) -> PerchServer:
    return PerchServer(binary, data_dir, data_dir.parent / "perch.log", dev=True)


def setup(server: PerchServer, devices: int) -> tuple[list, str]:
    """Topic, subscription, registry and devices; returns (devices, subscription path)."""
    ps = PubSub(server, PROJECT, Env())
    world = DeviceWorld(server, PROJECT, ps)
    try:
        topic = ps.create_topic(TOPIC_ID)
        sub = ps.create_subscription(f"{TOPIC_ID}-sub", topic, ack_deadline_seconds=10)
        registry = world.create_registry(event_configs=[{"pubsubTopicName": topic}])
        made = [registry.add_device(f"dev-{i:03}") for i in range(devices)]
        return made, sub
    finally:
        world.close()
        ps.close()


def connect_all(world: DeviceWorld, devices: list) -> list:
    """Connects every device (before the kill clock starts, so the kill lands on running load)."""
    return [(device, world.connected(device)) for device in devices]


def mqtt_load(clients: list, cycle: int, stop: threading.Event, sent: dict) -> None:
    """Every device publishes QoS 1 at MQTT_PER_DEVICE_HZ until `stop`; `sent[client]` maps mid -> tag."""
    n = 0
    period = 1.0 / MQTT_PER_DEVICE_HZ
    while not stop.is_set():
        started = time.monotonic()
        for device, client in clients:
            if client.closed:
                continue
            tag = f"m{cycle}-{device.id}-{n}"
            info = client.publish(device.events(), body(tag), qos=1)
            sent.setdefault(client, {})[info.mid] = tag
        n += 1
        stop.wait(max(0.0, period - (time.monotonic() - started)))


def pubsub_load(ps: PubSub, topic: str, cycle: int, stop: threading.Event, futures: list) -> None:
    """Publishes at PUBSUB_HZ without client retries (a dead server fails the future at once)."""
    n = 0
    while not stop.is_set():
        tag = f"p{cycle}-{n}"
        futures.append((tag, ps.publisher.publish(topic, body(tag), retry=None, timeout=10)))
        n += 1
        stop.wait(1.0 / PUBSUB_HZ)


def subscribe(ps: PubSub, sub: str, ledger: Ledger):
    def callback(message) -> None:
        ledger.receive(message.data)
        message.ack()

    return ps.subscriber.subscribe(sub, callback)


def unsubscribe(streaming) -> None:
    """Cancels a StreamingPull and waits until its threads are done (before its client is closed)."""
    streaming.cancel()
    try:
        streaming.result(timeout=10)
    except Exception:  # noqa: BLE001 - cancelled or failed: either way it has stopped
        pass


def run_cycle(cycle: int, server: PerchServer, devices: list, sub: str, ledger: Ledger, rng: random.Random) -> dict:
    server.start()
    ps = PubSub(server, PROJECT, Env())
    world = DeviceWorld(server, PROJECT, ps)
    topic = ps.topic(TOPIC_ID)
    stop = threading.Event()
    sent: dict = {}
    futures: list = []
    clients = connect_all(world, devices)
    streaming = subscribe(ps, sub, ledger)
    loads = [threading.Thread(target=mqtt_load, args=(clients, cycle, stop, sent), daemon=True),
             threading.Thread(target=pubsub_load, args=(ps, topic, cycle, stop, futures), daemon=True)]
    for t in loads:
        t.start()
    kill_after = rng.uniform(1.0, 4.0)
    time.sleep(kill_after)  # the random moment: nothing to poll for, the point is to strike mid-load
    server.kill()
    stop.set()
    for t in loads:
        t.join(30)
    unsubscribe(streaming)
    mqtt_acked = 0
    for client, mids in sent.items():
        with client._cond:  # noqa: SLF001 - paho's callback thread may still be winding down
            pubacked = set(client.pubacked)
        tags = {tag for mid, tag in mids.items() if mid in pubacked}
        mqtt_acked += len(tags)
        with ledger.lock:
            ledger.acked_mqtt |= tags
    pubsub_acked = 0
    for tag, future in futures:
        try:
            future.result(timeout=15)
        except Exception:  # noqa: BLE001 - not acknowledged: the server died first
            continue
        pubsub_acked += 1
        with ledger.lock:
            ledger.acked_pubsub.add(tag)
    world.close()
    ps.close()
    return {"kill_after": kill_after, "mqtt_acked": mqtt_acked, "pubsub_acked": pubsub_acked}


def drain(server: PerchServer, sub: str, ledger: Ledger) -> None:
    """A clean server; receive until everything acknowledged arrived and nothing new came for a while."""
    server.start()
    ps = PubSub(server, PROJECT, Env())
    streaming = subscribe(ps, sub, ledger)
    deadline = time.monotonic() + DRAIN_DEADLINE_SECONDS
    last_total, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        with ledger.lock:
            total = sum(ledger.received.values())
            missing = bool((ledger.acked_mqtt | ledger.acked_pubsub) - ledger.received.keys())
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        if not missing and time.monotonic() - last_change >= DRAIN_QUIET_SECONDS:
            break
        time.sleep(0.2)
    unsubscribe(streaming)
    ps.close()
    server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--perch", default=os.environ.get("PERCH_BIN", str(ROOT / "target" / "debug" / "perch")))
    parser.add_argument("--seed", type=int, default=None, help="random seed for the kill moments")
    args = parser.parse_args()
    # The Google client's background threads complain loudly about a server that was just killed.
    logging.basicConfig(level=logging.CRITICAL)
    threading.excepthook = lambda hook: None
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="perch-kill9-") as tmp:
        server = new_server(Path(tmp) / "data", args.perch)
        server.start()
        devices, sub = setup(server, args.devices)
        server.stop()
        ledger = Ledger()
        started = time.monotonic()
        for cycle in range(1, args.cycles + 1):
            r = run_cycle(cycle, server, devices, sub, ledger, rng)
            print(f"cycle {cycle:3}: SIGKILL after {r['kill_after']:.2f} s; acknowledged {r['mqtt_acked']} MQTT "
                  f"+ {r['pubsub_acked']} Pub/Sub", flush=True)
        drain(server, sub, ledger)
        acked = ledger.acked()
        lost = acked - ledger.received.keys()
        duplicates = sum(n - 1 for n in ledger.received.values() if n > 1)
        print(f"cycles: {args.cycles}  devices: {args.devices}  wall: {time.monotonic() - started:.0f} s")
        print(f"acknowledged: {len(acked)} ({len(ledger.acked_mqtt)} MQTT PUBACKed, "
              f"{len(ledger.acked_pubsub)} Pub/Sub publish-acked)")
        print(f"received: {len(ledger.received)} distinct, {sum(ledger.received.values())} deliveries")
        print(f"lost: {len(lost)}  duplicates: {duplicates}  corrupt: {len(ledger.corrupt)}")
        if lost:
            print("first lost:", sorted(lost)[:10])
        if lost or ledger.corrupt:
            print(f"server log: {server.log_path} (kept: {tmp} is removed on exit)")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
