"""`perch-agent` first boot (docs/agent.md "First boot: provisioning"): an agent holding only its batch's bootstrap
key provisions itself over MQTT (docs/provisioning.md), stores its new key (0600) and device id, streams as that
device, and uses the stored identity on later runs; a denied request exits 3 without writing a key.

The agent binary comes from PERCH_AGENT_BIN; without it every test here is skipped with the reason printed. The
bootstrap credential is made through the admin REST (`POST {registry}/bootstraps` returns `privateKey`), decisions are
read back from `GET {registry}/provisioningDecisions`, readings from the registry's `temperature` subscription.

Fixed waits: none; every wait is a process exit or a subscription poll with a deadline.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

import pytest

from agent_helpers import AGENT_BIN, AGENT_SKIP_REASON, Agent, FixedPortServer, free_port, pull_all, write_config
from conftest import PERCH_BIN, _LIVE_SERVERS, _counter, _shutdown
from device_helpers import DeviceWorld, Seed, unique
from pubsub_helpers import PubSub

if not AGENT_BIN:
    print(AGENT_SKIP_REASON)
pytestmark = [
    pytest.mark.skipif(not AGENT_BIN, reason=AGENT_SKIP_REASON),
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"),
]

EXIT_DENIED = 3


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


def create_bootstrap(seed, tmp: Path, **fields) -> tuple[str, Path]:
    """A Perch-made bootstrap credential; its private key is written to `tmp` (0600) as the factory image would."""
    body = {"id": unique("lot"), **fields}
    created = seed.admin.ok("POST", f"{seed.registry.name}/bootstraps", body=body)
    assert created.get("privateKey", "").startswith("-----BEGIN"), created
    path = tmp / "bootstrap_private.pem"
    path.write_text(created["privateKey"])
    path.chmod(0o600)
    return created["id"], path


def decisions(seed, **params) -> list[dict]:
    return seed.admin.ok("GET", f"{seed.registry.name}/provisioningDecisions", params=params)["decisions"]


def host_serial() -> Optional[str]:
    """What the agent claims without SERIAL: the `Serial` line of /proc/cpuinfo (unless all zeros), else the
    machine id."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Serial" and value.strip().strip("0"):
                return value.strip()
    except OSError:
        pass
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            if Path(path).read_text().strip():
                return Path(path).read_text().strip()
        except OSError:
            pass
    return None


def host_mac() -> str:
    """The MAC the agent claims: the first interface by name other than `lo` with a non-zero address, or ""."""
    net = Path("/sys/class/net")
    for name in sorted(os.listdir(net)) if net.is_dir() else []:
        if name == "lo":
            continue
        try:
            mac = (net / name / "address").read_text().strip().lower()
        except OSError:
            continue
        if len(mac) == 17 and mac != "00:00:00:00:00:00":
            return mac
    return ""


def bootstrap_config(tmp: Path, seed, bootstrap: str, bootstrap_key: Path, **extra) -> dict:
    """Config values of a fresh Pi: no DEVICE_ID, no device key yet, only the bootstrap credential."""
    host, _, port = seed.world.endpoints["mqtt"].rpartition(":")
    values = {
        "PROJECT_ID": seed.registry.project,
        "REGION": seed.registry.location,
        "REGISTRY_ID": seed.registry.id,
        "PRIVATE_KEY": tmp / "keys" / "ec_private.pem",
        "BOOTSTRAP_KEY": bootstrap_key,
        "BOOTSTRAP_ID": bootstrap,
        "GOOGLE_ROOT_CERT": seed.world.endpoints["ca"],
        "MQTT_HOST": host,
        "MQTT_PORT": int(port),
        "QUEUE_DIR": tmp / "queue",
    }
    values.update(extra)
    return values


def test_an_agent_with_only_a_bootstrap_key_provisions_itself_and_later_runs_reuse_the_identity(
        seed, tmp_path, agents):
    bootstrap, bootstrap_key = create_bootstrap(seed, tmp_path, lot="kitchen-pis")
    # Without SERIAL the agent claims the host's serial (cpuinfo or machine id); only set it where there is none.
    serial = host_serial()
    extra = {}
    if not serial:
        serial = extra["SERIAL"] = unique("serial")
    config = write_config(tmp_path / "gcp_iot_config.txt",
                          bootstrap_config(tmp_path, seed, bootstrap, bootstrap_key, **extra))
    key = tmp_path / "keys" / "ec_private.pem"
    id_file = tmp_path / "keys" / "ec_private.pem.device_id"
    expected_id = f"pi-{serial}"

    first = agents(config, tmp_path / "agent-1.log", "--simulate", "--once", "--once-timeout", "30")
    assert first.wait(90) == 0, first.log()
    provisioned = first.lines("provisioned")
    assert len(provisioned) == 1 and f"device={expected_id}" in provisioned[0], first.log()
    assert "BEGIN PRIVATE KEY" not in first.log()

    assert key.is_file() and stat.S_IMODE(key.stat().st_mode) == 0o600, oct(key.stat().st_mode)
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM"
    assert id_file.read_text().strip() == expected_id
    assert not [p.name for p in key.parent.iterdir() if p.name.endswith(".tmp")]

    got = pull_all(seed.ps, seed.subs["temperature"], 2)  # one cycle of two simulated sensors
    assert {b["_attributes"]["deviceId"] for b in got} == {expected_id}, got
    assert {b["device_id"] for b in got} == {expected_id}, got
    assert {b["_attributes"]["subFolder"] for b in got} == {"temperature"}, got

    made = decisions(seed, bootstrap=bootstrap)
    assert len(made) == 1 and made[0]["decision"] == "ALLOWED", made
    assert made[0]["device_id"] == expected_id and made[0]["serial"] == serial, made
    assert made[0].get("mac", "") == host_mac(), made
    device = seed.admin.get_device(f"{seed.registry.name}/devices/{expected_id}")
    assert device["metadata"]["provisionedBy"] == bootstrap, device
    assert device["metadata"]["lot"] == "kitchen-pis", device
    assert device["numId"] == got[0]["_attributes"]["deviceNumId"]

    # A later boot: the key exists, so no provisioning; the stored id is used (DEVICE_ID is still absent).
    key_bytes = key.read_bytes()
    second = agents(config, tmp_path / "agent-2.log", "--simulate", "--once", "--once-timeout", "30")
    assert second.wait(90) == 0, second.log()
    assert not second.lines("provisioning") and not second.lines("provisioned"), second.log()
    again = pull_all(seed.ps, seed.subs["temperature"], 2)
    assert {b["_attributes"]["deviceId"] for b in again} == {expected_id}, again
    assert min(b["seq"] for b in again) > max(b["seq"] for b in got), (got, again)
    assert key.read_bytes() == key_bytes
    assert len(decisions(seed, bootstrap=bootstrap)) == 1, "no second provisioning decision"


def test_a_denylisted_serial_exits_3_without_a_key_and_the_decision_is_listed(seed, tmp_path, agents):
    bootstrap, bootstrap_key = create_bootstrap(seed, tmp_path)
    serial = unique("stolen")
    seed.admin.ok("POST", f"{seed.registry.name}/provisioningPolicy:add",
                  body={"entries": [{"list": "DENY", "kind": "SERIAL", "value": serial, "reason": "reported stolen"}]})
    config = write_config(tmp_path / "gcp_iot_config.txt",
                          bootstrap_config(tmp_path, seed, bootstrap, bootstrap_key, SERIAL=serial))

    agent = agents(config, tmp_path / "agent.log", "--simulate", "--once", "--once-timeout", "30")
    assert agent.wait(90) == EXIT_DENIED, agent.log()
    denied = agent.lines("provisioning denied")
    assert len(denied) == 1, agent.log()
    assert "reason=DENYLISTED" in denied[0] and "reported stolen" in denied[0], denied
    assert not (tmp_path / "keys" / "ec_private.pem").exists()
    assert not (tmp_path / "keys" / "ec_private.pem.device_id").exists()
    assert not agent.lines("reading queued"), agent.log()

    listed = decisions(seed, bootstrap=bootstrap, reason="DENYLISTED")
    assert len(listed) == 1 and listed[0]["decision"] == "DENIED", listed
    assert listed[0]["serial"] == serial and listed[0]["device_id"] == f"pi-{serial}", listed
    missing = seed.admin.request("GET", f"{seed.registry.name}/devices/pi-{serial}")
    assert missing.status_code == 404, missing.text


def test_a_first_boot_without_the_server_retries_until_it_can_provision(tmp_path, project, monkeypatch, agents):
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
        bootstrap, bootstrap_key = create_bootstrap(seed, tmp_path)
        serial = unique("late")
        config = write_config(tmp_path / "gcp_iot_config.txt",
                              bootstrap_config(tmp_path, seed, bootstrap, bootstrap_key, SERIAL=serial,
                                               MQTT_PORT=server.mqtt_port))
        world.close()
        ps.close()
        assert server.stop() == 0

        # The network is not there yet: attempts fail and are retried with backoff, nothing is written.
        agent = agents(config, tmp_path / "agent.log", "--simulate", "--once", "--once-timeout", "60")
        agent.wait_for_lines("provisioning attempt failed", 2)
        assert not (tmp_path / "keys" / "ec_private.pem").exists()

        server.start()
        ps.connect(server)
        assert agent.wait(90) == 0, agent.log()
        assert len(agent.lines("provisioned")) == 1, agent.log()
        got = pull_all(ps, seed.subs["temperature"], 2)
        assert {b["_attributes"]["deviceId"] for b in got} == {f"pi-{serial}"}, got
        ps.close()
    finally:
        _shutdown(server)


def test_a_reflashed_pi_waits_for_an_operators_approval_then_streams_with_its_new_key(seed, tmp_path, agents):
    bootstrap, bootstrap_key = create_bootstrap(seed, tmp_path, reprovisionPolicy="REQUIRE_APPROVAL")
    device_id = unique("pi")
    config = write_config(tmp_path / "gcp_iot_config.txt",
                          bootstrap_config(tmp_path, seed, bootstrap, bootstrap_key, SERIAL=unique("serial"),
                                           DEVICE_ID=device_id))
    key = tmp_path / "keys" / "ec_private.pem"
    first = agents(config, tmp_path / "agent-1.log", "--simulate", "--once", "--once-timeout", "30")
    assert first.wait(90) == 0, first.log()
    old_key = key.read_bytes()
    pull_all(seed.ps, seed.subs["temperature"], 2)

    # Reflashed: the board lost its key and asks again with a new one. It is held, and keeps asking.
    key.unlink()
    second = agents(config, tmp_path / "agent-2.log", "--simulate", "--once", "--once-timeout", "90")
    second.wait_for_lines("PENDING_APPROVAL", timeout=30)
    pending = seed.admin.ok("GET", f"{seed.registry.name}/provisioningApprovals", params={"state": "PENDING"})
    assert [a["deviceId"] for a in pending["approvals"]] == [device_id], pending
    assert not key.exists()

    seed.admin.ok("POST", f"{seed.registry.name}/provisioningApprovals/{device_id}:approve",
                  body={"keyFingerprint": pending["approvals"][0]["keyFingerprint"]})
    assert second.wait(90) == 0, second.log()
    assert key.is_file() and key.read_bytes() != old_key
    got = pull_all(seed.ps, seed.subs["temperature"], 2)
    assert {b["_attributes"]["deviceId"] for b in got} == {device_id}, got
