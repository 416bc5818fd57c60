"""Listener hardening (issue 12 items 2 and 3) against a real `perch serve`: silent or stalled connections are
closed by deadlines, one source address cannot take a listener, and running out of file descriptors neither spins
a core nor silences `/healthz`.

Loopback trick: all of 127.0.0.0/8 reaches a server on 127.0.0.1, so the "hostile" connections come from
127.0.0.2 and the real device from 127.0.0.1 — two source addresses on one machine. The tests lower the caps and
deadlines with `perch serve` flags so they stay small and fast.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import requests

from device_helpers import DeviceWorld, Seed, b64, mqtt_address, wait_until
from perch_server import PerchServer
from pubsub_helpers import PubSub

PERCH_BIN = os.path.abspath(os.environ.get("PERCH_BIN", "perch"))
HOSTILE = "127.0.0.2"


def _start(tmp_path: Path, name: str, args: tuple, prefix: tuple = ()) -> PerchServer:
    class Prefixed(PerchServer):
        def command(self) -> list[str]:
            return list(prefix) + super().command()

    server = Prefixed(PERCH_BIN, tmp_path / f"data-{name}", tmp_path / f"perch-{name}.log", dev=True,
                      extra_args=("--mqtt-plain", "127.0.0.1:0") + args)
    return server.start()


@pytest.fixture
def servers(tmp_path):
    made: list[PerchServer] = []

    def make(name: str, *args: str, prefix: tuple = ()) -> PerchServer:
        made.append(_start(tmp_path, name, tuple(args), prefix))
        return made[-1]

    yield make
    for server in made:
        try:
            server.stop()
        finally:
            server.kill()


def _address(server: PerchServer, key: str) -> tuple[str, int]:
    return mqtt_address(server.endpoints, key)


def _connect(server: PerchServer, key: str, source: str = HOSTILE) -> socket.socket:
    return socket.create_connection(_address(server, key), timeout=5, source_address=(source, 0))


def _tls(server: PerchServer, sock: socket.socket) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=server.endpoints["ca"])
    context.check_hostname = False
    return context.wrap_socket(sock, server_hostname="localhost")


def _closed_within(sock, seconds: float) -> bool:
    """True when the server closes `sock` (EOF or reset) within `seconds`; False if it is still open."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        return True
    except (socket.timeout, TimeoutError):
        return False


def _seed(server: PerchServer, project: str, monkeypatch) -> tuple[Seed, PubSub]:
    ps = PubSub(server, project, monkeypatch)
    return Seed.create(DeviceWorld(server, project, ps), http=True), ps


# ------------------------------------------------------------------------------------------------------------
# item 2: per-source cap, header and idle deadlines


def test_silent_tls_connections_from_one_source_do_not_lock_out_a_device(servers, project, monkeypatch):
    server = servers("caps", "--http-max-connections", "16", "--http-max-connections-per-source", "4")
    seed, ps = _seed(server, project, monkeypatch)
    device = seed.device("victim")
    held = []
    try:
        # The whole listener's worth of handshaken, silent connections from one address: only 4 are kept.
        for _ in range(16):
            try:
                held.append(_tls(server, _connect(server, "device_http")))
            except (ssl.SSLError, ConnectionError, OSError):
                pass
        assert len(held) <= 4, f"{len(held)} silent connections from one address were kept; the cap is 4"
        assert held and not _closed_within(held[0], 0.2), "connections under the cap stay open"

        session = requests.Session()
        session.trust_env = False
        session.verify = server.endpoints["ca"]
        started = time.monotonic()
        response = session.post(
            f"https://{server.endpoints['device_http']}/v1/{device.registry.name}/devices/{device.id}:publishEvent",
            json={"binaryData": b64(b"still here")}, timeout=1.0,
            headers={"authorization": f"Bearer {device.token()}", "cache-control": "no-cache"})
        assert response.status_code == 200, response.text
        assert time.monotonic() - started < 1.0
        session.close()
    finally:
        for s in held:
            s.close()
        ps.close()


def test_silent_and_slow_connections_are_closed_by_deadlines(servers):
    server = servers("deadlines", "--http-header-timeout", "1", "--http-idle-timeout", "1")
    # Handshaken TLS, then nothing at all.
    silent = _tls(server, _connect(server, "device_http"))
    # Half a request head, then nothing (admin listener, plain HTTP on loopback).
    half_head = _connect(server, "admin")
    half_head.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    # A whole head announcing a body that never comes.
    stalled_body = _connect(server, "admin")
    stalled_body.sendall(b"POST /v1/projects/p/topics/busy-topic:publish HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    try:
        for what, sock in (("silent TLS", silent), ("half head", half_head), ("stalled body", stalled_body)):
            assert _closed_within(sock, 10), f"the {what} connection is still open"
        # Keep-alive connections that do send requests are served normally.
        response = requests.get(server.admin_url + "/healthz", timeout=5)
        assert response.status_code == 200
    finally:
        for s in (silent, half_head, stalled_body):
            s.close()


def test_a_request_the_server_is_working_on_is_not_idle(servers):
    server = servers("busy", "--http-header-timeout", "1", "--http-idle-timeout", "1")
    base = f"{server.admin_url}/v1/projects/busy"
    http = requests.Session()
    http.trust_env = False
    assert http.put(f"{base}/topics/busy-topic", json={}, timeout=10).status_code == 200
    assert http.put(f"{base}/subscriptions/busy-sub", json={"topic": "projects/busy/topics/busy-topic"}, timeout=10).status_code == 200
    # A pull waits silently for a message published 2.5 s later: longer than the idle timeout.
    publisher = threading.Timer(2.5, lambda: requests.post(f"{base}/topics/busy-topic:publish", timeout=10,
                                                           json={"messages": [{"data": b64(b"late")}]}))
    publisher.start()
    try:
        started = time.monotonic()
        response = http.post(f"{base}/subscriptions/busy-sub:pull", json={"maxMessages": 1}, timeout=15)
        assert response.status_code == 200, response.text
        assert time.monotonic() - started >= 2.0, "the pull answered before the message was published"
        assert [m["message"]["data"] for m in response.json()["receivedMessages"]] == [b64(b"late")]
    finally:
        publisher.join()
        http.close()


def test_mqtt_per_source_cap(servers, project, monkeypatch):
    server = servers("mqtt-caps", "--mqtt-max-connections-per-source", "2")
    held = [_connect(server, "mqtt_plain") for _ in range(2)]
    extra = _connect(server, "mqtt_plain")
    try:
        assert _closed_within(extra, 5), "a third connection from one address is closed at once"
        assert not any(_closed_within(s, 0.2) for s in held), "connections under the cap stay open"
        seed, ps = _seed(server, project, monkeypatch)
        device = seed.device("mqtt-victim")
        seed.world.connected(device, plain=True)
        seed.world.close()
        ps.close()
    finally:
        for s in held + [extra]:
            s.close()


# ------------------------------------------------------------------------------------------------------------
# item 3: out of file descriptors


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_file_descriptors_neither_spins_nor_silences_healthz(servers):
    server = servers("nofile", prefix=("prlimit", "--nofile=256:256", "--"))
    log = server.log_path.read_text()
    assert "connection capacity" in log, log[-2000:]
    flood = []
    try:
        # 300 raw TCP connects (more than the 256 descriptors the server may open), none of them speaking;
        # non-blocking, because the ones the server does not accept wait in (or overflow) the backlog.
        host, port = _address(server, "mqtt")
        for _ in range(300):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((host, port))
            flood.append(sock)
        before = _cpu_seconds(server.proc.pid)
        started = time.monotonic()
        wait_until(lambda: requests.get(server.admin_url + "/healthz", timeout=2).status_code == 200, 10,
                   "/healthz to answer while the MQTT listener is flooded")
        time.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
        used = _cpu_seconds(server.proc.pid) - before
        elapsed = time.monotonic() - started
        assert used < 0.5 * elapsed, f"perch used {used:.2f} s of CPU in {elapsed:.2f} s while flooded"
    finally:
        for s in flood:
            s.close()
    server.assert_running()
