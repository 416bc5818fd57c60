"""Helpers for test_agent.py: run the real `perch-agent` binary (env PERCH_AGENT_BIN) against a real `perch serve`,
with a config file in the seed's `KEY = VALUE` format and a fake 1-Wire sysfs tree (`28-*/w1_slave`).

The agent logs one line per event to stderr (tracing's fmt: `<time>  INFO <message> key=value ...`); tests wait on
those lines with deadlines, never on sleeps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from cryptography.hazmat.primitives import serialization

from perch_server import PerchServer
from pubsub_helpers import wait_until

AGENT_BIN = os.environ.get("PERCH_AGENT_BIN", "").strip()
if AGENT_BIN:
    AGENT_BIN = os.path.abspath(AGENT_BIN)
AGENT_SKIP_REASON = ("PERCH_AGENT_BIN is not set: these tests need a built `perch-agent` binary "
                     "(e.g. PERCH_AGENT_BIN=$CARGO_TARGET_DIR/debug/perch-agent)")


def free_port() -> int:
    """A TCP port nobody listens on right now (bound and released; fine on a test machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def w1_slave(milli: int, crc_ok: bool = True) -> str:
    """A w1_therm `w1_slave` file: CRC line, then the scratchpad with `t=` in milli-degrees."""
    verdict = "YES" if crc_ok else "NO"
    return (f"72 01 4b 46 7f ff 0e 10 57 : crc=57 {verdict}\n"
            f"72 01 4b 46 7f ff 0e 10 57 t={milli}\n")


def fake_w1(base: Path, sensors: dict[str, tuple[int, bool]]) -> Path:
    """`base/w1/devices/<id>/w1_slave` for each sensor id -> (milli-degrees, crc ok), plus the bus master entry."""
    root = base / "w1" / "devices"
    (root / "w1_bus_master1").mkdir(parents=True, exist_ok=True)
    for sensor_id, (milli, crc_ok) in sensors.items():
        (root / sensor_id).mkdir(parents=True, exist_ok=True)
        (root / sensor_id / "w1_slave").write_text(w1_slave(milli, crc_ok))
    return root


def write_key(path: Path, key, sec1: bool = False) -> Path:
    """The device's private key as PEM: PKCS#8 (`PRIVATE KEY`) or, for EC, SEC1 (`EC PRIVATE KEY`, as openssl
    ecparam writes it)."""
    fmt = serialization.PrivateFormat.TraditionalOpenSSL if sec1 else serialization.PrivateFormat.PKCS8
    path.write_bytes(key.private_key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    return path


def write_config(path: Path, values: dict) -> Path:
    lines = ["# perch-agent test config (seed format)"]
    lines += [f"{key} = {value}" for key, value in values.items() if value is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


def device_config(tmp: Path, device, endpoints: dict, *, port: Optional[int] = None, **extra) -> dict:
    """Config values for `device` (device_helpers.Device) on a server with `endpoints`."""
    host, _, mqtt_port = endpoints["mqtt"].rpartition(":")
    key_path = write_key(tmp / f"{device.id}-private.pem", device.key, sec1=extra.pop("sec1", False))
    values = {
        "PROJECT_ID": device.project,
        "REGION": device.registry.location,
        "REGISTRY_ID": device.registry.id,
        "DEVICE_ID": device.id,
        "PRIVATE_KEY": key_path,
        "ALGORITHM": device.key.alg,
        "GOOGLE_ROOT_CERT": endpoints["ca"],
        "MQTT_HOST": host,
        "MQTT_PORT": port or int(mqtt_port),
        "QUEUE_DIR": tmp / f"{device.id}-queue",
    }
    values.update(extra)
    return values


class Agent:
    """One `perch-agent` process; stderr+stdout go to a log file the test can read."""

    def __init__(self, config: Path, log: Path, *args: str) -> None:
        self.config = config
        self.log_path = log
        self.args = args
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Agent":
        with open(self.log_path, "ab") as log:
            log.write(f"===== start: perch-agent -c {self.config} {' '.join(self.args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen([AGENT_BIN, "-c", str(self.config), *self.args], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> Optional[int]:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"perch-agent ignored SIGTERM\n{self.log()}")
        return self.proc.returncode if self.proc else None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self, message: str) -> list[str]:
        return [line for line in self.log().splitlines() if f" {message}" in line]

    def wait_for_lines(self, message: str, count: int = 1, timeout: float = 30.0) -> list[str]:
        def check():
            if self.proc and self.proc.poll() is not None and len(self.lines(message)) < count:
                raise AssertionError(f"perch-agent exited ({self.proc.returncode}) before {count}x {message!r}\n"
                                     f"{self.log()[-4000:]}")
            found = self.lines(message)
            return found if len(found) >= count else None
        try:
            return wait_until(check, timeout, f"{count}x {message!r} in the agent log", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- agent log ---\n{self.log()[-4000:]}") from None


def field(line: str, name: str) -> str:
    """The value of `name=value` in a log line."""
    match = re.search(rf"\b{name}=(\S+)", line)
    assert match, f"no {name}= in {line!r}"
    return match.group(1)


def pull_all(ps, sub: str, count: int, timeout: float = 30.0) -> list[dict]:
    """Pull and ack until `count` distinct seqs arrived; returns every delivery (duplicates too) as parsed JSON plus
    `_attributes`, in delivery order."""
    got: list[dict] = []
    seqs: set = set()
    deadline = time.monotonic() + timeout
    while len(seqs) < count:
        batch = ps.pull(sub)
        if batch:
            ps.ack(sub, [r.ack_id for r in batch])
        for r in batch:
            body = json.loads(bytes(r.message.data))
            body["_attributes"] = dict(r.message.attributes)
            got.append(body)
            seqs.add(body.get("seq"))
        if len(seqs) >= count:
            break
        if time.monotonic() >= deadline:
            raise AssertionError(f"{sub}: wanted {count} distinct readings within {timeout}s, got seqs {sorted(seqs)}")
        time.sleep(0.05)
    return got


class FixedPortServer(PerchServer):
    """`perch serve` whose MQTT listener is on a port chosen in advance, so an agent can be configured before the
    server runs and find it again after a restart."""

    def __init__(self, *args, mqtt_port: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mqtt_port = mqtt_port

    def command(self) -> list[str]:
        cmd = super().command()
        at = cmd.index("--mqtt")
        cmd[at + 1] = f"127.0.0.1:{self.mqtt_port}"
        return cmd
