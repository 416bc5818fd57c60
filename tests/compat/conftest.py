"""Fixtures for the Perch compatibility suite: real `perch serve` processes and real Google clients.

Run:  PERCH_BIN=target/debug/perch /root/.cache/perch-venv/bin/pytest tests/compat
Without PERCH_BIN every test here is skipped (with the reason printed), so the suite can be collected before the
binary exists.
"""

from __future__ import annotations

import itertools
import os
import socket
import uuid
from pathlib import Path

import pytest

from iot_clients import FLAVOURS, make_admin
from perch_server import PerchServer

HERE = Path(__file__).resolve().parent
PERCH_BIN = os.environ.get("PERCH_BIN", "").strip()
if PERCH_BIN:
    PERCH_BIN = os.path.abspath(PERCH_BIN)
SKIP_REASON = ("PERCH_BIN is not set: these tests need a built `perch` binary "
               "(e.g. PERCH_BIN=target/debug/perch pytest tests/compat)")

# Everything talks to 127.0.0.1: make sure no proxy from the environment gets in the way
# (requests, httplib2 and grpc all honour *_proxy / no_proxy).
for _var in ("NO_PROXY", "no_proxy"):
    _have = [h for h in os.environ.get(_var, "").split(",") if h]
    os.environ[_var] = ",".join(_have + [h for h in ("127.0.0.1", "localhost", "::1") if h not in _have])
# httplib2 (google-api-python-client) takes its timeout from the socket default; bound it so a wedged server
# fails a test instead of hanging the run.
socket.setdefaulttimeout(30)

_LIVE_SERVERS: list[PerchServer] = []
_counter = itertools.count(1)


def pytest_configure(config):
    if PERCH_BIN and not (os.path.isfile(PERCH_BIN) and os.access(PERCH_BIN, os.X_OK)):
        raise pytest.UsageError(f"PERCH_BIN={PERCH_BIN!r} is not an executable file")


def pytest_report_header(config):
    return f"perch binary: {PERCH_BIN}" if PERCH_BIN else f"perch compat suite SKIPPED: {SKIP_REASON}"


def pytest_collection_modifyitems(config, items):
    if PERCH_BIN:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of every running server's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _LIVE_SERVERS:
        for server in _LIVE_SERVERS:
            report.sections.append((f"perch serve log ({server.data_dir.name})", server.log_tail()))


# ------------------------------------------------------------------------------------------------------------
# servers


def _new_server(base: Path, *, dev: bool) -> PerchServer:
    n = next(_counter)
    server = PerchServer(PERCH_BIN, base / f"data-{n}", base / f"perch-{n}.log", dev=dev)
    _LIVE_SERVERS.append(server)
    return server


def _shutdown(server: PerchServer) -> None:
    try:
        server.stop()
    finally:
        server.kill()
        if server in _LIVE_SERVERS:
            _LIVE_SERVERS.remove(server)


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory):
    """One shared `perch serve --dev` (anonymous admin access). Tests isolate themselves by project id."""
    server = _new_server(tmp_path_factory.mktemp("perch-dev"), dev=True)
    server.start()
    yield server
    _shutdown(server)


@pytest.fixture(scope="session")
def token_server(tmp_path_factory):
    """One shared `perch serve` without --dev: admin calls need `Authorization: Bearer $(cat DATA/admin-token)`."""
    server = _new_server(tmp_path_factory.mktemp("perch-token"), dev=False)
    server.start()
    yield server
    _shutdown(server)


@pytest.fixture
def server_factory(tmp_path):
    """`server_factory(dev=True)` -> a started server on a fresh data dir, private to the test (for restarts)."""
    made: list[PerchServer] = []

    def make(*, dev: bool = True, start: bool = True) -> PerchServer:
        server = _new_server(tmp_path, dev=dev)
        made.append(server)
        return server.start() if start else server

    yield make
    for server in made:
        _shutdown(server)


@pytest.fixture
def private_ps(server_factory, project, monkeypatch):
    """Google's Pub/Sub clients on a private dev server of the test's own (for restarts and SIGKILL)."""
    from pubsub_helpers import PubSub

    server = server_factory(dev=True)
    client = PubSub(server, project, monkeypatch)
    yield client
    client.close()


@pytest.fixture
def live_dev_server(dev_server):
    dev_server.assert_running()
    yield dev_server
    dev_server.assert_running()


@pytest.fixture
def live_token_server(token_server):
    token_server.assert_running()
    yield token_server
    token_server.assert_running()


# ------------------------------------------------------------------------------------------------------------
# clients and names


@pytest.fixture
def project():
    """A project id of its own for each test (Perch accepts any project id), so tests share a server safely."""
    return "perch-compat-" + uuid.uuid4().hex[:10]


@pytest.fixture(params=FLAVOURS)
def iot(request, live_dev_server):
    """An anonymous admin client of each flavour against the shared dev server."""
    client = make_admin(request.param, live_dev_server.endpoints)
    yield client
    client.close()


@pytest.fixture
def admin_factory():
    """`admin_factory(flavour, server.endpoints, token=None)` -> a client that is closed at teardown."""
    made = []

    def make(flavour, endpoints, token=None):
        client = make_admin(flavour, endpoints, token=token)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# ------------------------------------------------------------------------------------------------------------
# device bridges (MQTT + HTTPS): fixtures for test_mqtt.py and test_http_bridge.py
#
# The bridge tests run on servers of their own that also open the plain MQTT listener (`--mqtt-plain`, used by
# the hostile-input tests), so kicked / revoked / misbehaving device connections never share a server with the
# admin and Pub/Sub suites.

# A short command PUBACK deadline so the DEADLINE_EXCEEDED test waits 2 s, not the default 10 s.
COMMAND_ACK_TIMEOUT = 2.0
BRIDGE_ARGS = ("--mqtt-plain", "127.0.0.1:0", "--command-ack-timeout", str(COMMAND_ACK_TIMEOUT))


def _new_bridge_server(base: Path) -> PerchServer:
    n = next(_counter)
    server = PerchServer(PERCH_BIN, base / f"data-{n}", base / f"perch-{n}.log", dev=True, extra_args=BRIDGE_ARGS)
    _LIVE_SERVERS.append(server)
    return server


@pytest.fixture(scope="session")
def bridge_server(tmp_path_factory):
    """One shared `perch serve --dev … --mqtt-plain 127.0.0.1:0` for the device-bridge tests (isolated by project)."""
    server = _new_bridge_server(tmp_path_factory.mktemp("perch-bridge"))
    server.start()
    yield server
    _shutdown(server)


@pytest.fixture
def live_bridge_server(bridge_server):
    bridge_server.assert_running()
    yield bridge_server
    bridge_server.assert_running()


@pytest.fixture
def bridge_server_factory(tmp_path):
    """`bridge_server_factory()` -> a started dev server with the plain MQTT listener, private to the test."""
    made: list[PerchServer] = []

    def make(*, start: bool = True) -> PerchServer:
        server = _new_bridge_server(tmp_path)
        made.append(server)
        return server.start() if start else server

    yield make
    for server in made:
        _shutdown(server)


@pytest.fixture
def world(live_bridge_server, project, monkeypatch):
    """A `DeviceWorld` (admin REST, Pub/Sub clients, MQTT/HTTP device clients) on the shared bridge server."""
    from device_helpers import DeviceWorld
    from pubsub_helpers import PubSub

    ps = PubSub(live_bridge_server, project, monkeypatch)
    world = DeviceWorld(live_bridge_server, project, ps)
    yield world
    world.close()
    ps.close()


@pytest.fixture
def seed(world):
    """The seed setup: topics temperature + sensordata (one pull subscription each) and registry
    RaspberryPiDevices (MQTT only). Modules that need HTTP override this fixture."""
    from device_helpers import Seed

    return Seed.create(world)
