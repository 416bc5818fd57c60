"""The HTTPS device bridge (`cloudiotdevice` DeviceService) against a real `perch serve`, with `requests` the way
the IoT Core HTTP sample calls it (SPEC.md §3, §5, §6 and §9 item 10).

Every request carries `authorization: Bearer <device JWT>` (aud = project), `content-type: application/json` and
`cache-control: no-cache`, and verifies TLS against the CA file named in endpoints.json. The sample base64-encodes
with `urlsafe_b64encode` and writes snake_case bodies (`binary_data`, `sub_folder`); the Node sample and the
discovery document use camelCase. Success MUST be exactly 200 with reason phrase `OK` (the Python sample retries
on anything else, the Node sample checks the phrase).
"""

from __future__ import annotations

import base64
import time

import pytest

from device_helpers import (STATE_LIMIT, TELEMETRY_LIMIT, DeviceKey, DeviceWorld, Seed, assert_error,
                            assert_telemetry, b64, hs256_jwt, unb64, unsigned_jwt, urlsafe_b64, wait_for_field,
                            wait_until)
from pubsub_helpers import PubSub

# Bytes whose standard and URL-safe base64 differ ("+/" vs "-_").
EVENT = b'{"temperature": 21.5}\xfb\xff'
STATE = b'{"fan": "on"}\xfb\xef'


@pytest.fixture
def seed(world) -> Seed:
    """Topics temperature + sensordata and registry RaspberryPiDevices with HTTP enabled."""
    return Seed.create(world, http=True)


def lenient_b64(text: str) -> bytes:
    """Decode base64 of either alphabet, padded or not (the server's own output is standard and padded)."""
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def assert_ok(response, body=None) -> dict:
    assert response.status_code == 200, f"{response.request.method} {response.url}: " \
                                        f"{response.status_code} {response.text[:500]}"
    assert response.reason == "OK", f"reason phrase {response.reason!r} (the Node sample waits for 'OK')"
    parsed = response.json()
    if body is not None:
        assert parsed == body
    return parsed


# ------------------------------------------------------------------------------------------------------------
# the sample flow


@pytest.mark.parametrize("alg,fmt", [("ES256", "ES256_PEM"), ("RS256", "RSA_X509_PEM")])
def test_sample_flow_config_events_and_state_with_snake_case_and_urlsafe_base64(seed, alg, fmt):
    key = DeviceKey.es256() if alg == "ES256" else DeviceKey.rs256()
    device = seed.device(f"http-{alg.lower()}", key, fmt=fmt)
    http = seed.world.http()
    token = device.token(lifetime=3600)  # the HTTP sample's tokens live 60 min

    assert_ok(http.get_config(device, token, 0), {"version": "1"})

    assert_ok(http.publish_event(device, {"binary_data": urlsafe_b64(EVENT)}, token), {})
    assert_ok(http.publish_event(device, {"binary_data": urlsafe_b64(EVENT + b"-t"), "sub_folder": "temperature"},
                                 token), {})
    assert_telemetry(seed.ps.drain(seed.subs["sensordata"], 1), {EVENT: device.attributes("")})
    assert_telemetry(seed.ps.drain(seed.subs["temperature"], 1), {EVENT + b"-t": device.attributes("temperature")})

    assert_ok(http.set_state(device, {"state": {"binary_data": urlsafe_b64(STATE)}}, token), {})
    got = wait_for_field(seed.admin, device.name,
                         lambda d: d.get("state", {}).get("binaryData") == b64(STATE) and d.get("lastStateTime"),
                         "the state sent over HTTP")
    assert [unb64(s["binaryData"]) for s in seed.admin.list_states(device.name)] == [STATE]
    assert "lastConfigAckTime" not in got, "HTTP config fetches are not acknowledgements (SPEC §5)"
    assert "deviceAckTime" not in got["config"]
    # telemetry and state never leak into each other
    assert seed.ps.pull_quiet(seed.subs["sensordata"], 0.3) == []


def test_camel_case_bodies_num_id_paths_and_unpadded_base64(seed):
    device = seed.device("http-camel")
    http = seed.world.http()
    token = device.token()

    assert_ok(http.get_config(device, token, 0, param="localVersion", by_num_id=True), {"version": "1"})
    assert_ok(http.publish_event(device, {"binaryData": b64(EVENT), "subFolder": "alerts/high"}, token,
                                 by_num_id=True), {})
    unpadded = urlsafe_b64(b"x").rstrip("=")
    assert_ok(http.publish_event(device, {"binaryData": unpadded}, token, by_num_id=True), {})
    assert_telemetry(seed.ps.drain(seed.subs["sensordata"], 2),
                     {EVENT: device.attributes("alerts/high"), b"x": device.attributes("")})

    assert_ok(http.set_state(device, {"state": {"binaryData": b64(STATE)}}, token, by_num_id=True), {})
    wait_for_field(seed.admin, device.name, lambda d: d.get("state", {}).get("binaryData") == b64(STATE),
                   "the state sent by numId")


def test_get_config_local_version_rules(seed):
    device = seed.device("http-config")
    http = seed.world.http()
    token = device.token()
    data = b'{"fan_on": true}\xfb\xff'
    assert seed.admin.modify_config(device.name, data)["version"] == "2"

    for local_version in (0, 1):  # 0 = current, older = latest
        body = assert_ok(http.get_config(device, token, local_version))
        assert body["version"] == "2" and lenient_b64(body["binaryData"]) == data, (local_version, body)
    # == latest: Perch choice, the version without data (SPEC §5)
    assert_ok(http.get_config(device, token, 2), {"version": "2"})
    assert_error(http.get_config(device, token, 3), 400, "OUT_OF_RANGE")

    got = wait_for_field(seed.admin, device.name, lambda d: d.get("lastConfigSendTime"), "lastConfigSendTime")
    assert "deviceAckTime" not in got["config"] and "lastConfigAckTime" not in got


def test_bad_jwts_are_401_and_publish_nothing(seed):
    device = seed.device("http-auth")
    http = seed.world.http()
    now = int(time.time())
    bad = {
        "other-key": device.token(DeviceKey.es256()),
        "wrong-aud": device.key.jwt("some-other-project"),
        "expired": device.token(iat=now - 3600, exp=now - 700),
        "iat-11-min-ahead": device.token(iat=now + 660),
        "lifetime-25h": device.token(iat=now, exp=now + 25 * 3600),
        "alg-none": unsigned_jwt(device.project),
        "alg-hs256": hs256_jwt(device.project),
        "rs256-for-es256-device": DeviceKey.rs256().jwt(device.project),
        "garbage": "not-a-jwt",
        "missing": None,
    }
    for case, token in bad.items():
        response = http.publish_event(device, {"binary_data": urlsafe_b64(case.encode())}, token)
        assert response.status_code == 401, f"{case}: {response.status_code} {response.text[:300]}"
        assert_error(response, 401, "UNAUTHENTICATED")
    assert_error(http.get_config(device, bad["other-key"], 0), 401, "UNAUTHENTICATED")
    assert_error(http.set_state(device, {"state": {"binary_data": urlsafe_b64(STATE)}}, bad["expired"]), 401,
                 "UNAUTHENTICATED")
    assert seed.ps.pull_quiet(seed.subs["sensordata"], 0.5) == []
    assert "state" not in seed.admin.get_device(device.name)

    assert_ok(http.publish_event(device, {"binary_data": urlsafe_b64(b"good")}, device.token()), {})


def test_http_disabled_registry_and_blocked_device_are_403(seed):
    off_registry = seed.world.create_registry("HttpDisabledDevices", http=False)
    off = off_registry.add_device("http-off")
    blocked = seed.device("http-blocked")
    seed.admin.patch_device(blocked.name, {"blocked": True}, "blocked")
    http = seed.world.http()

    for device in (off, blocked):
        token = device.token()
        assert_error(http.publish_event(device, {"binary_data": urlsafe_b64(b"denied")}, token), 403,
                     "PERMISSION_DENIED")
        assert_error(http.get_config(device, token, 0), 403, "PERMISSION_DENIED")
        assert_error(http.set_state(device, {"state": {"binary_data": urlsafe_b64(STATE)}}, token), 403,
                     "PERMISSION_DENIED")
    assert seed.ps.pull_quiet(seed.subs["sensordata"], 0.5) == []


def test_unknown_device_is_404(seed):
    known = seed.device("http-known")
    http = seed.world.http()
    ghost = seed.device("http-ghost")
    seed.admin.delete_device(ghost.name)
    assert_error(http.publish_event(ghost, {"binary_data": urlsafe_b64(b"boo")}, ghost.token()), 404, "NOT_FOUND")
    assert_error(http.get_config(ghost, ghost.token(), 0), 404, "NOT_FOUND")
    assert_ok(http.get_config(known, known.token(), 0), {"version": "1"})


def test_v1beta1_has_the_same_shapes(seed):
    device = seed.device("http-beta")
    http = seed.world.http(version="v1beta1")
    assert_ok(http.get_config(device, device.token(), 0), {"version": "1"})
    assert_ok(http.publish_event(device, {"binaryData": b64(b"beta")}, device.token()), {})
    assert_telemetry(seed.ps.drain(seed.subs["sensordata"], 1), {b"beta": device.attributes("")})


def test_size_limits(seed):
    http = seed.world.http()
    device, state_device = seed.device("http-limits"), seed.device("http-state-limits")
    big = bytes(range(256)) * (TELEMETRY_LIMIT // 256)
    assert_ok(http.publish_event(device, {"binary_data": urlsafe_b64(big)}, device.token()), {})
    assert_telemetry(seed.ps.drain(seed.subs["sensordata"], 1), {big: device.attributes("")})
    assert_error(http.publish_event(device, {"binary_data": urlsafe_b64(big + b"!")}, device.token()), 400,
                 "INVALID_ARGUMENT")

    assert_ok(http.set_state(device, {"state": {"binary_data": urlsafe_b64(b"s" * STATE_LIMIT)}}, device.token()), {})
    # a different device, so that the 1/s state rate limit cannot be what answers
    assert_error(http.set_state(state_device, {"state": {"binary_data": urlsafe_b64(b"s" * (STATE_LIMIT + 1))}},
                                state_device.token()), 400, "INVALID_ARGUMENT")
    assert seed.ps.pull_quiet(seed.subs["sensordata"], 0.5) == []
    assert "state" not in seed.admin.get_device(state_device.name)


# ------------------------------------------------------------------------------------------------------------
# rate limits and reads without writes (issue 12 item 13): a private server with a low telemetry rate


@pytest.fixture
def slow_seed(tmp_path, project, monkeypatch):
    """The HTTP seed on a private server whose telemetry rate is 2/s per device (burst 4)."""
    import os

    from perch_server import PerchServer

    server = PerchServer(os.path.abspath(os.environ["PERCH_BIN"]), tmp_path / "data", tmp_path / "perch.log", dev=True,
                         extra_args=("--telemetry-rate", "2"))
    server.start()
    ps = PubSub(server, project, monkeypatch)
    world = DeviceWorld(server, project, ps)
    yield Seed.create(world, http=True)
    world.close()
    ps.close()
    try:
        server.stop()
    finally:
        server.kill()


def _store_writes(seed) -> float:
    """How many registry/Pub/Sub store writes the server has committed (the group-commit histogram's sum)."""
    text = seed.world.admin.session.get(seed.world.server.admin_url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("perch_store_group_commit_writes_sum"))


def test_http_telemetry_over_the_device_rate_is_429_and_nothing_accepted_is_lost(slow_seed):
    http = slow_seed.world.http()
    device, other = slow_seed.device("http-fast"), slow_seed.device("http-calm")
    token = device.token()
    started = time.monotonic()
    answers = [http.publish_event(device, {"binaryData": b64(f"m{i}".encode())}, token) for i in range(12)]
    elapsed = time.monotonic() - started
    accepted = [i for i, r in enumerate(answers) if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert refused, f"12 events in {elapsed:.2f}s at 2/s (burst 4) were all accepted"
    for r in refused:
        assert "faster than" in assert_error(r, 429, "RESOURCE_EXHAUSTED")
    assert 4 <= len(accepted) <= 4 + 2 * elapsed + 1, (len(accepted), elapsed)
    # Another device has its own budget.
    assert_ok(http.publish_event(other, {"binaryData": b64(b"calm")}, other.token()), {})
    # Every event answered 200 reached Pub/Sub.
    expected = {f"m{i}".encode(): device.attributes("") for i in accepted}
    expected[b"calm"] = other.attributes("")
    assert_telemetry(slow_seed.ps.drain(slow_seed.subs["sensordata"], len(expected)), expected)


def test_http_state_faster_than_once_a_second_is_429(slow_seed):
    http = slow_seed.world.http()
    device = slow_seed.device("http-state-rate")
    token = device.token()
    assert_ok(http.set_state(device, {"state": {"binaryData": b64(b"first")}}, token), {})
    message = assert_error(http.set_state(device, {"state": {"binaryData": b64(b"second")}}, token), 429,
                           "RESOURCE_EXHAUSTED")
    assert "once per 1000 ms" in message
    assert [unb64(s["binaryData"]) for s in slow_seed.admin.list_states(device.name)] == [b"first"]
    # After the interval the device may report again.
    wait_until(lambda: http.set_state(device, {"state": {"binaryData": b64(b"third")}}, token).status_code == 200,
               5, "a state report after the 1 s interval", interval=0.25)


def test_get_config_does_not_write_the_registry_per_request(slow_seed):
    http = slow_seed.world.http()
    device = slow_seed.device("http-config-reader")
    token = device.token()
    assert_ok(http.get_config(device, token, 0), {"version": "1"})
    before = _store_writes(slow_seed)
    for _ in range(40):
        assert_ok(http.get_config(device, token, 0), {"version": "1"})
    writes = _store_writes(slow_seed) - before
    # The activity flush (every 2 s) may write once or twice meanwhile; 40 reads must not mean 40 writes.
    assert writes <= 5, f"40 getConfig calls caused {writes} store writes"
    # The bookkeeping still happens, batched.
    wait_for_field(slow_seed.admin, device.name, lambda d: d.get("lastConfigSendTime"), "lastConfigSendTime")
