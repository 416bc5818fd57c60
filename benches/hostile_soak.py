"""Hostile clients soak (issue 12, docs/benchmarks.md "Hostile clients soak").

A `perch serve` streams telemetry from well-behaved devices (paho-mqtt, QoS 1 over TLS, from 127.0.0.1) into a
subscription that Google's Pub/Sub client drains, while, for the attack phase, other processes on other loopback
source addresses (127.0.1.x) at once:
  - hold half-open TLS handshakes (a TLS record header and nothing more) on the MQTT and HTTPS device listeners,
  - run slowloris (headers trickled one line every few seconds) on every HTTP listener: admin REST, gRPC and the
    HTTPS device bridge,
  - flood the MQTT listener with CONNECTs carrying bad JWTs for the good devices' own ids.
The attackers reconnect whenever the server cuts them off, so the pressure stays up for the whole phase.

Reported: the good devices' PUBACK p50/p99 in a quiet phase and under attack, messages PUBACKed vs delivered to the
subscription (lost must be 0), good connections dropped (must be 0), the server's RSS and open files over time,
and how often the server cut each kind of attacker off. Exit status 1 if anything acknowledged was lost or a good
device was disconnected.

Usage (Google's Python clients and paho from tests/compat/requirements.txt):
    python benches/hostile_soak.py --perch-bin target/release/perch [--duration 300] [--devices 100] [--rate 5]
        [--half-open 5000] [--slowloris 300] [--bad-connects 200] [--extra-arg=--flag ...]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing as mp
import os
import random
import resource
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "compat"))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from device_helpers import AdminRest, DeviceKey, connect_packet, seed_event_configs  # noqa: E402
from perch_server import PerchServer  # noqa: E402

GOOD_SOURCE = "127.0.0.1"


def attack_source(i: int) -> str:
    return f"127.0.1.{1 + i % 200}"


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


# ----------------------------------------------------------------------------------------------------------------
# attackers (each in its own process, so the good load's threads are not starved by the GIL)


def run_attacker(kind: str, args: dict, until: float, out: mp.Queue) -> None:
    raise_nofile()
    stats = {"kind": kind, "opened": 0, "cut_off": 0, "errors": 0, "connacks": {}}
    try:
        asyncio.run(ATTACKS[kind](args, until, stats))
    except Exception as e:  # noqa: BLE001 - report, never hang the bench
        stats["crash"] = repr(e)
    out.put(stats)


async def _hold(stats, until, open_conn, first: bytes, trickle: bytes | None, every: float) -> None:
    """One attacker slot: connect, send `first`, then `trickle` every `every` s (or nothing); reconnect when cut."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.wait_for(open_conn(), 10)
        except Exception:  # noqa: BLE001
            stats["errors"] += 1
            await asyncio.sleep(0.5)
            continue
        stats["opened"] += 1
        try:
            writer.write(first)
            await writer.drain()
            while time.monotonic() < until:
                try:
                    data = await asyncio.wait_for(reader.read(4096), every)
                    if not data:
                        stats["cut_off"] += 1
                        break
                except asyncio.TimeoutError:
                    if trickle:
                        writer.write(trickle)
                        await writer.drain()
        except (ConnectionError, OSError):
            stats["cut_off"] += 1
        finally:
            writer.close()


async def half_open(args, until, stats) -> None:
    # A TLS handshake record header announcing 512 bytes of ClientHello, then silence.
    record = bytes([0x16, 0x03, 0x01, 0x02, 0x00]) + b"\x01\x00\x01\xfc\x03\x03"
    targets = args["tls_targets"]
    slots = []
    for i in range(args["count"]):
        host, port = targets[i % len(targets)]
        src = attack_source(i)
        slots.append(_hold(stats, until, lambda h=host, p=port, s=src: asyncio.open_connection(
            h, p, local_addr=(s, 0)), record, None, 30))
    await asyncio.gather(*slots)


async def slowloris(args, until, stats) -> None:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    slots = []
    for i in range(args["count"]):
        host, port, use_tls = args["http_targets"][i % len(args["http_targets"])]
        src = attack_source(i + 7)
        head = f"POST /v1/projects/p/topics/t:publish HTTP/1.1\r\nHost: {host}\r\n".encode()

        def conn(h=host, p=port, s=src, t=use_tls):
            return asyncio.open_connection(h, p, local_addr=(s, 0), ssl=tls if t else None,
                                           server_hostname=h if t else None)
        slots.append(_hold(stats, until, conn, head, b"X-Slow: 1\r\n", 5))
    await asyncio.gather(*slots)


async def bad_connects(args, until, stats) -> None:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    host, port = args["mqtt"]
    interval = 1.0 / max(args["rate"], 1)
    workers = 32

    async def worker(w: int) -> None:
        while time.monotonic() < until:
            started = time.monotonic()
            client_id = random.choice(args["client_ids"])
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host, local_addr=(attack_source(w + 50), 0)), 10)
                stats["opened"] += 1
                writer.write(connect_packet(client_id, "eyJhbGciOiJFUzI1NiJ9.eyJhdWQiOiJ4In0.bm90LWEtc2lnbmF0dXJl"))
                await writer.drain()
                connack = await asyncio.wait_for(reader.read(4), 10)
                code = str(connack[3]) if len(connack) == 4 else "none"
                stats["connacks"][code] = stats["connacks"].get(code, 0) + 1
                writer.close()
            except Exception:  # noqa: BLE001
                stats["errors"] += 1
            await asyncio.sleep(max(0.0, workers * interval - (time.monotonic() - started)))
    await asyncio.gather(*(worker(w) for w in range(workers)))


ATTACKS = {"half_open": half_open, "slowloris": slowloris, "bad_connects": bad_connects}


# ----------------------------------------------------------------------------------------------------------------
# the good load


class GoodFleet:
    """`n` paho clients over TLS from 127.0.0.1, each publishing QoS 1 at `rate`/s; PUBACK latency per message."""

    def __init__(self, admin: AdminRest, registry: str, project: str, ca: str, mqtt_addr, n: int, rate: float):
        self.lock = threading.Lock()
        self.sent: dict[tuple[int, int], float] = {}
        self.acked: set[bytes] = set()
        self.latencies: list[tuple[float, float]] = []  # (ack time, seconds)
        self.disconnects = 0
        self.acks: collections.deque = collections.deque()  # appended by paho's threads, drained by _settle
        self.unmatched: list[tuple[int, int, float]] = []
        self.rate = rate
        self.clients = []
        self.payloads: dict[tuple[int, int], bytes] = {}
        host, port = mqtt_addr
        for i in range(n):
            key = DeviceKey.es256()
            device_id = f"good-{i}"
            admin.create_device(registry, {"id": device_id, "credentials": [key.credential()]})
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{registry}/devices/{device_id}",
                            reconnect_on_failure=False)
            c.username_pw_set("unused", key.jwt(project, lifetime=3600))
            c.tls_set(ca_certs=ca)
            c.max_inflight_messages_set(1000)
            c.on_publish = self._on_publish(i)
            c.on_disconnect = self._on_disconnect
            c.connect(host, port, keepalive=60, bind_address=GOOD_SOURCE)
            c.loop_start()
            self.clients.append((i, device_id, c))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._publish_loop, daemon=True)

    def _on_publish(self, i):
        # paho calls this holding its own lock, which publish() takes too: never wait on ours here.
        def cb(client, userdata, mid, reason_code, properties):
            self.acks.append((i, mid, time.monotonic()))
        return cb

    def _settle(self) -> None:
        """Matches PUBACKs to what was sent (under self.lock); a PUBACK that beat its bookkeeping waits."""
        pending, self.unmatched = self.unmatched, []
        while self.acks:
            pending.append(self.acks.popleft())
        for i, mid, now in pending:
            t = self.sent.pop((i, mid), None)
            if t is None:
                self.unmatched.append((i, mid, now))
                continue
            self.latencies.append((now, now - t))
            self.acked.add(self.payloads.pop((i, mid)))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.lock:
            self.disconnects += 1

    def _publish_loop(self) -> None:
        seq = 0
        period = 1.0 / self.rate
        next_round = time.monotonic()
        while not self.stop.is_set():
            for i, device_id, c in self.clients:
                payload = f"{device_id}:{seq}".encode()
                sent_at = time.monotonic()
                info = c.publish(f"/devices/{device_id}/events", payload, qos=1)
                with self.lock:
                    self.sent[(i, info.mid)] = sent_at
                    self.payloads[(i, info.mid)] = payload
            seq += 1
            next_round += period
            time.sleep(max(0.0, next_round - time.monotonic()))

    def window(self, start: float, end: float) -> dict:
        with self.lock:
            self._settle()
            xs = sorted(lat for t, lat in self.latencies if start <= t < end)
        if not xs:
            return {"acked": 0}
        return {"acked": len(xs), "p50_ms": round(1000 * xs[len(xs) // 2], 2),
                "p99_ms": round(1000 * xs[min(len(xs) - 1, int(len(xs) * 0.99))], 2),
                "max_ms": round(1000 * xs[-1], 2)}

    def finish(self, timeout: float = 30) -> int:
        """Stops publishing, waits for outstanding PUBACKs; returns how many never came."""
        self.stop.set()
        self.thread.join()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                self._settle()
                if not self.sent:
                    break
            time.sleep(0.1)
        with self.lock:
            self._settle()
            return len(self.sent)


def sample_server(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return {"rss_mib": round(rss / 1024, 1), "fds": fds, "cpu_s": cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--perch-bin", default=str(HERE.parent / "target" / "release" / "perch"))
    ap.add_argument("--duration", type=float, default=300, help="seconds of attack")
    ap.add_argument("--quiet", type=float, default=30, help="seconds measured before the attack")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--rate", type=float, default=5, help="messages/s per good device")
    ap.add_argument("--half-open", type=int, default=5000)
    ap.add_argument("--slowloris", type=int, default=300)
    ap.add_argument("--bad-connects", type=int, default=200, help="bad-JWT CONNECTs per second")
    ap.add_argument("--extra-arg", action="append", default=[], help="passed to perch serve")
    args = ap.parse_args()
    raise_nofile()

    work = Path(tempfile.mkdtemp(prefix="perch-soak-"))
    server = PerchServer(args.perch_bin, work / "data", work / "perch.log", dev=True, extra_args=tuple(args.extra_arg))
    server.start()
    pid = server.proc.pid
    ep = server.endpoints
    os.environ["PUBSUB_EMULATOR_HOST"] = ep["grpc"]
    from google.cloud import pubsub_v1

    project = "soak"
    admin = AdminRest(server.admin_url)
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    for t in ("temperature", "sensordata"):
        publisher.create_topic(name=publisher.topic_path(project, t))
    sub = subscriber.subscription_path(project, "sensordata-sub")
    subscriber.create_subscription(name=sub, topic=publisher.topic_path(project, "sensordata"))
    reg = admin.create_registry(project, {"id": "soak", "eventNotificationConfigs": seed_event_configs(project)})
    registry = reg["name"]

    delivered: set[bytes] = set()
    dlock = threading.Lock()

    def on_message(message):
        with dlock:
            delivered.add(bytes(message.data))
        message.ack()
    future = subscriber.subscribe(sub, on_message, flow_control=pubsub_v1.types.FlowControl(max_messages=5000))

    fleet = GoodFleet(admin, registry, project, ep["ca"], host_port(ep["mqtt"]), args.devices, args.rate)
    time.sleep(2)
    fleet.thread.start()
    samples = []

    def sample_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            samples.append((time.monotonic(), sample_server(pid)))
            time.sleep(1)

    sample_for(5)  # warm-up
    quiet_start = time.monotonic()
    sample_for(args.quiet)
    quiet = fleet.window(quiet_start, time.monotonic())
    quiet_cpu = (samples[-1][1]["cpu_s"] - samples[0][1]["cpu_s"])

    attack_start = time.monotonic()
    until = attack_start + args.duration
    ctx = mp.get_context("spawn")  # no fork of a process with gRPC threads
    out = ctx.Queue()
    mqtt_addr = host_port(ep["mqtt"])
    tls_targets = [mqtt_addr, host_port(ep["device_http"])]
    http_targets = [(*host_port(ep["admin"]), False), (*host_port(ep["grpc"]), False),
                    (*host_port(ep["device_http"]), True)]
    client_ids = [f"{registry}/devices/good-{i}" for i in range(args.devices)]
    attackers = [
        ctx.Process(target=run_attacker, args=("half_open", {"count": args.half_open, "tls_targets": tls_targets},
                                              until, out)),
        ctx.Process(target=run_attacker, args=("slowloris", {"count": args.slowloris, "http_targets": http_targets},
                                              until, out)),
        ctx.Process(target=run_attacker, args=("bad_connects", {"rate": args.bad_connects, "mqtt": mqtt_addr,
                                                               "client_ids": client_ids}, until, out)),
    ]
    for p in attackers:
        p.start()
    sample_for(args.duration)
    attack = fleet.window(attack_start + 5, time.monotonic())
    attack_samples = [s for t, s in samples if t >= attack_start]
    results = [out.get(timeout=60) for _ in attackers]
    for p in attackers:
        p.join(timeout=30)

    never_acked = fleet.finish()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with dlock:
            if fleet.acked <= delivered:
                break
        time.sleep(0.5)
    with dlock:
        lost = len(fleet.acked - delivered)
    future.cancel()
    good_disconnects = fleet.disconnects  # before the server's own shutdown closes them all
    server_alive = server.running
    health = admin.session.get(server.admin_url.rstrip("/") + "/healthz", timeout=5).status_code
    final = sample_server(pid)
    server.stop()

    report = {
        "devices": args.devices, "rate_per_device": args.rate, "attack_seconds": args.duration,
        "quiet": quiet, "quiet_server_cpu_per_s": round(quiet_cpu / args.quiet, 3),
        "attack": attack,
        "p99_ratio": round(attack.get("p99_ms", 0) / max(quiet.get("p99_ms", 1e-9), 1e-9), 2),
        "acked": len(fleet.acked), "delivered": len(delivered), "lost": lost, "never_acked": never_acked,
        "good_disconnects": good_disconnects, "server_alive": server_alive, "healthz": health,
        "rss_mib_quiet": samples[0][1]["rss_mib"],
        "rss_mib_attack_max": max(s["rss_mib"] for s in attack_samples),
        "rss_mib_end": final["rss_mib"],
        "fds_attack_max": max(s["fds"] for s in attack_samples),
        "attack_server_cpu_per_s": round((attack_samples[-1]["cpu_s"] - attack_samples[0]["cpu_s"])
                                         / max(1, len(attack_samples) - 1), 3),
        "attackers": results,
        "log": str(work / "perch.log"),
    }
    print(json.dumps(report, indent=2))
    ok = lost == 0 and never_acked == 0 and good_disconnects == 0 and server_alive and health == 200
    print("RESULT:", "pass" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
