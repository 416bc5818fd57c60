"""Start, stop and restart a real `perch serve` process for the compatibility tests (DESIGN.md "Interface contract").

    server = PerchServer(binary, data_dir, log_path, dev=True)
    server.start()              # waits for DATA_DIR/endpoints.json, fails fast if the process exits
    server.endpoints["admin"]   # "127.0.0.1:PORT"
    server.restart()            # SIGTERM, wait for exit 0, start again on the same data dir
    server.stop()
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

STARTUP_TIMEOUT = float(os.environ.get("PERCH_STARTUP_TIMEOUT", "30"))
SHUTDOWN_TIMEOUT = float(os.environ.get("PERCH_SHUTDOWN_TIMEOUT", "15"))
POLL_INTERVAL = 0.02
ENDPOINT_KEYS = ("admin", "grpc", "mqtt", "mqtt_plain", "device_http", "ca")


class ServerFailed(AssertionError):
    pass


class PerchServer:
    def __init__(self, binary: str, data_dir: Path, log_path: Path, *, dev: bool, extra_args: tuple = ()) -> None:
        self.binary = binary
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.dev = dev
        self.extra_args = tuple(extra_args)
        self.proc: Optional[subprocess.Popen] = None
        self.endpoints: dict = {}
        self.starts = 0

    # ---------------------------------------------------------------------------------------------------------
    def command(self) -> list[str]:
        cmd = [self.binary, "serve", "--data-dir", str(self.data_dir),
               "--admin", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
               "--mqtt", "127.0.0.1:0", "--device-http", "127.0.0.1:0"]
        if self.dev:
            cmd.append("--dev")
        return cmd + list(self.extra_args)

    def spawn(self) -> subprocess.Popen:
        """Start the process without waiting for it (used to check refusals, e.g. a locked data dir)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        log.write(f"\n===== start #{self.starts + 1}: {' '.join(self.command())}\n".encode())
        log.flush()
        try:
            return subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def start(self) -> "PerchServer":
        assert not self.running, "server already running"
        # A previous run's endpoints.json names dead ports: remove it so we only accept the new one.
        (self.data_dir / "endpoints.json").unlink(missing_ok=True)
        self.proc = self.spawn()
        self.starts += 1
        self.endpoints = self._wait_for_endpoints()
        return self

    def _wait_for_endpoints(self) -> dict:
        path = self.data_dir / "endpoints.json"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last_error = "not written yet"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise ServerFailed(f"perch serve exited with {rc} before writing {path}\n{self.log_tail()}")
            try:
                endpoints = json.loads(path.read_text())
            except FileNotFoundError:
                pass
            except ValueError as exc:  # the contract says "written atomically": a torn file is a bug
                last_error = f"unparsable: {exc}"
            else:
                missing = [k for k in ENDPOINT_KEYS if k not in endpoints]
                if missing:
                    raise ServerFailed(f"{path} lacks {missing}: {endpoints!r}")
                return endpoints
            time.sleep(POLL_INTERVAL)
        self.kill()
        raise ServerFailed(f"{path} {last_error} after {STARTUP_TIMEOUT}s\n{self.log_tail()}")

    # ---------------------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_running(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerFailed(f"perch serve died (exit {self.proc.returncode})\n{self.log_tail()}")

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT) -> Optional[int]:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise ServerFailed(f"perch serve ignored SIGTERM for {timeout}s\n{self.log_tail()}")
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> "PerchServer":
        rc = self.stop()
        if rc != 0:
            raise ServerFailed(f"perch serve exited with {rc} on SIGTERM (contract: 0)\n{self.log_tail()}")
        return self.start()

    # ---------------------------------------------------------------------------------------------------------
    @property
    def admin_url(self) -> str:
        return "http://" + self.endpoints["admin"]

    @property
    def grpc_target(self) -> str:
        return self.endpoints["grpc"]

    @property
    def token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no log at {self.log_path})"
        return f"--- last {lines} lines of {self.log_path} ---\n" + "\n".join(text.splitlines()[-lines:])
