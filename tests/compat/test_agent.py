"""`perch-agent` (DESIGN.md "perch-agent") against a real `perch serve`: the Raspberry Pi side of the walk-through.

The agent binary comes from PERCH_AGENT_BIN (.ci/run exports $CARGO_TARGET_DIR/debug/perch-agent); without it every
test here is skipped with the reason printed. Readings are read back with google-cloud-pubsub from the registry's
`temperature` topic, so each test also checks the six trusted attributes the bridge stamps.

Fixed waits: none; every wait polls the agent's log or a subscription with a deadline.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import pytest

from agent_helpers import (AGENT_BIN, AGENT_SKIP_REASON, Agent, FixedPortServer, device_config, fake_w1, field,
                           free_port, pull_all, write_config)
from conftest import PERCH_BIN, _LIVE_SERVERS, _counter, _shutdown
from device_helpers import DeviceWorld, Seed, parse_time, wait_until
from pubsub_helpers import PubSub

if not AGENT_BIN:
    print(AGENT_SKIP_REASON)
pytestmark = [
    pytest.mark.skipif(not AGENT_BIN, reason=AGENT_SKIP_REASON),
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"),
]


@pytest.fixture
def world(live_bridge_server, project, monkeypatch):
    ps = PubSub(live_bridge_server, project, monkeypatch)
    world = DeviceWorld(live_bridge_server, project, ps)
    yield world
    world.close()
    ps.close()


@pytest.fixture
def seed(world) -> Seed:
    return Seed.create(world)


@pytest.fixture
def agents():
    """`agents(config, log, *args)` -> a started Agent; every agent is killed at teardown."""
    made: list[Agent] = []

    def start(config, log, *args) -> Agent:
        agent = Agent(config, log, *args).start()
        made.append(agent)
        return agent

    yield start
    for agent in made:
        agent.kill9()


def readings_in(ps, sub: str, count: int, timeout: float = 30.0) -> list[dict]:
    return pull_all(ps, sub, count, timeout)


# ------------------------------------------------------------------------------------------------------------


def test_good_readings_arrive_with_trusted_attributes_and_a_bad_crc_is_skipped(seed, tmp_path, agents):
    device = seed.device("raspberrypi-agent")
    w1 = fake_w1(tmp_path, {"28-0000075d1a2b": (21_500, True), "28-0000075d9999": (23_000, False)})
    config = write_config(tmp_path / "gcp_iot_config.txt",
                          device_config(tmp_path, device, seed.world.endpoints, W1_DEVICES_DIR=w1, sec1=True))
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    agent = agents(config, tmp_path / "agent.log", "--once", "--once-timeout", "30")
    assert agent.wait(60) == 0, agent.log()

    got = readings_in(seed.ps, seed.subs["temperature"], 1)
    got += [json.loads(bytes(r.message.data)) for r in seed.ps.pull_quiet(seed.subs["temperature"], 0.5)]
    assert len(got) == 1, got
    reading = got[0]
    assert reading["_attributes"] == device.attributes("temperature")
    assert reading["device_id"] == device.id
    assert reading["sensor_id"] == "28-0000075d1a2b"
    assert reading["temperature_c"] == 21.5
    assert reading["seq"] == 1
    stamp = parse_time(reading["timestamp"])
    assert reading["timestamp"].endswith("Z") and before <= stamp <= dt.datetime.now(dt.timezone.utc)

    skipped = agent.lines("reading skipped")
    assert len(skipped) == 1 and "28-0000075d9999" in skipped[0] and "CRC" in skipped[0], agent.log()
    assert agent.lines("queue drained"), agent.log()
    assert seed.ps.pull_quiet(seed.subs["sensordata"], 0.3) == []


def test_a_bad_config_file_exits_2_naming_each_key_and_the_file(tmp_path):
    config = write_config(tmp_path / "gcp_iot_config.txt", {
        "PROJECT_ID": "p", "REGION": "us-central1", "REGISTRY_ID": "r",
        "PRIVATE_KEY": tmp_path / "missing.pem", "GOOGLE_ROOT_CERT": tmp_path / "missing-ca.pem",
        "MQTT_HOST": "127.0.0.1", "MQTT_PORT": "eighty", "ALGORITHM": "HS256"})
    done = subprocess.run([AGENT_BIN, "-c", str(config), "--once"], capture_output=True, timeout=30, text=True)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    for key in ("DEVICE_ID", "MQTT_PORT", "ALGORITHM"):
        assert any(key in line and str(config) in line for line in lines), (key, lines)
    # Key files are checked only once the file itself is valid: fix the file, the paths are reported next.
    config.write_text(config.read_text().replace("MQTT_PORT = eighty", "MQTT_PORT = 8883")
                      .replace("ALGORITHM = HS256", "DEVICE_ID = d"))
    done = subprocess.run([AGENT_BIN, "-c", str(config), "--once"], capture_output=True, timeout=30, text=True)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert any("PRIVATE_KEY" in line and str(config) in line for line in lines), lines
    assert any("GOOGLE_ROOT_CERT" in line and str(config) in line for line in lines), lines


def test_offline_readings_survive_kill_9_and_arrive_in_order_once_the_server_is_up(
        tmp_path, project, monkeypatch, agents):
    if not PERCH_BIN:
        pytest.skip("PERCH_BIN is not set")
    n = next(_counter)
    server = FixedPortServer(PERCH_BIN, tmp_path / f"data-{n}", tmp_path / f"perch-{n}.log", dev=True,
                             mqtt_port=free_port())
    _LIVE_SERVERS.append(server)
    try:
        server.start()
        ps = PubSub(server, project, monkeypatch)
        world = DeviceWorld(server, project, ps)
        seed = Seed.create(world)
        device = seed.device("offline-pi")
        config = write_config(tmp_path / "gcp_iot_config.txt",
                              device_config(tmp_path, device, server.endpoints, port=server.mqtt_port))
        world.close()
        ps.close()
        assert server.stop() == 0

        # Offline: readings queue on disk; then the agent dies without any chance to flush.
        log = tmp_path / "agent.log"
        first = agents(config, log, "--simulate", "--interval", "1")
        first.wait_for_lines("reading queued", 6)
        first.kill9()
        queued_before_restart = len(first.lines("reading queued"))
        second = agents(config, log, "--simulate", "--interval", "1")
        second.wait_for_lines("reading queued", queued_before_restart + 2)
        assert not second.lines("reading published")

        server.start()
        ps.connect(server)
        # Everything queued so far must come out, in order, none lost; duplicates are allowed (at-least-once)
        # and removed by seq.
        queued = [int(field(line, "seq")) for line in second.lines("reading queued")]
        assert queued == list(range(1, len(queued) + 1)), queued
        got = pull_all(ps, seed.subs["temperature"], len(queued), timeout=60)
        second.stop()
        got += [json.loads(bytes(r.message.data)) for r in ps.pull(seed.subs["temperature"])]
        firsts: list[int] = []
        for body in got:
            if body["seq"] not in firsts:
                firsts.append(body["seq"])
        assert firsts[:len(queued)] == queued, firsts
        assert firsts == sorted(firsts), firsts
        assert all(b["_attributes"]["deviceId"] == "offline-pi" for b in got if "_attributes" in b)
        ps.close()
    finally:
        _shutdown(server)


def test_a_config_interval_change_speeds_up_publishing_and_state_is_reported(seed, tmp_path, agents):
    device = seed.device("config-pi")
    config = write_config(tmp_path / "gcp_iot_config.txt", device_config(tmp_path, device, seed.world.endpoints))
    agent = agents(config, tmp_path / "agent.log", "--simulate", "--interval", "30")
    agent.wait_for_lines("reading published", 2)  # the first cycle: two simulated sensors
    agent.wait_for_lines("config received: empty")  # version 1 is empty and sent on subscribe

    seed.admin.modify_config(device.name, json.dumps({"interval_s": 1}).encode())
    agent.wait_for_lines("config applied")
    # At 30 s a second cycle would take half a minute; at 1 s, three more cycles come within a few seconds.
    agent.wait_for_lines("reading published", 2 + 6, timeout=15)

    def state():
        states = seed.admin.list_states(device.name)
        bodies = [json.loads(__import__("base64").b64decode(s["binaryData"])) for s in states if s.get("binaryData")]
        return [b for b in bodies if b.get("interval_s") == 1] or None

    report = wait_until(state, 30, "a state report with interval_s 1", interval=0.5)[0]
    assert report["sensors"] == ["simulated-1", "simulated-2"], report
    assert report["agent_version"] and "queue_depth" in report, report

    commands = seed.admin.send_command(device.name, b"reboot please", subfolder="ops")
    assert commands.status_code == 200, commands.text
    line = agent.wait_for_lines("command received")[0]
    assert "subfolder=ops" in line and "reboot please" in line, line


def test_the_jwt_is_renewed_by_reconnecting_before_it_expires(seed, tmp_path, agents):
    device = seed.device("renewing-pi")
    config = write_config(tmp_path / "gcp_iot_config.txt", device_config(tmp_path, device, seed.world.endpoints))
    agent = agents(config, tmp_path / "agent.log", "--simulate", "--interval", "1", "--jwt-lifetime", "10")
    agent.wait_for_lines("connected")
    agent.wait_for_lines("disconnected error=reconnecting to renew the JWT", timeout=20)
    agent.wait_for_lines("connected", 2, timeout=20)
    published = len(agent.lines("reading published"))
    agent.wait_for_lines("reading published", published + 2, timeout=15)
    agent.stop()
    got = pull_all(seed.ps, seed.subs["temperature"], published + 2)
    assert {b["_attributes"]["deviceId"] for b in got} == {"renewing-pi"}
