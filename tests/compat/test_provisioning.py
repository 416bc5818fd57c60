"""Fleet provisioning over MQTT (docs/provisioning.md): one bootstrap credential per batch may
only ask for a device credential; allow/deny lists, quota, expiry and re-use decide; every
decision reaches the device and the decisions list; a provisioned device streams as itself and
can be revoked alone."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from device_helpers import Device, DeviceKey, MqttDevice, assert_telemetry, mqtt_address, unique, wait_until


def create_bootstrap(seed, **fields) -> tuple[str, str]:
    """A Perch-made bootstrap key pair; returns (bootstrap id, private key PEM)."""
    body = {"id": unique("lot"), **fields}
    created = seed.admin.ok("POST", f"{seed.registry.name}/bootstraps", body=body)
    assert created["enabled"] is True and created["publicKey"].startswith("-----BEGIN PUBLIC KEY-----"), created
    return created["id"], created["privateKey"]


def policy(seed, list_: str, kind: str, value: str, reason: str = "") -> None:
    seed.admin.ok("POST", f"{seed.registry.name}/provisioningPolicy:add",
                  body={"entries": [{"list": list_, "kind": kind, "value": value, "reason": reason}]})


class Claimant:
    """A device that holds only the bootstrap key, asking for its own credential."""

    def __init__(self, seed, bootstrap_id: str, bootstrap_key: str) -> None:
        self.seed = seed
        token = jwt.encode({"aud": seed.world.project, "iat": int(dt.datetime.now().timestamp()),
                            "exp": int(dt.datetime.now().timestamp()) + 600}, bootstrap_key, algorithm="ES256")
        host, port = mqtt_address(seed.world.endpoints)
        self.client = MqttDevice(host, port, f"{seed.registry.name}/bootstraps/{bootstrap_id}", token, ca=seed.world.ca)
        seed.world.clients.append(self.client)
        self.prefix = f"/bootstraps/{bootstrap_id}"

    def ask(self, device_id: str, serial: str, key: DeviceKey | None = None) -> dict:
        if self.client.connack is None:
            assert self.client.connect() == 0
        rid = uuid.uuid4().hex
        self.client.subscribe(f"{self.prefix}/responses/{rid}", qos=1)
        key = key or DeviceKey.es256()
        body = {"serial": serial, "mac": "b8:27:eb:00:00:01", "device_id": device_id,
                "public_key": {"format": "ES256_PEM", "key": key.public_pem()}}
        self.client.publish_acked(f"{self.prefix}/requests/{rid}", json.dumps(body).encode())
        topic = f"{self.prefix}/responses/{rid}"
        msg = self.client.wait(lambda: next((m for m in self.client.messages if m.topic == topic), None), 10,
                               "the provisioning answer")
        answer = json.loads(msg.payload)
        answer["_key"] = key
        return answer


def decisions(seed, **params) -> list[dict]:
    return seed.admin.ok("GET", f"{seed.registry.name}/provisioningDecisions", params=params)["decisions"]


def test_a_device_with_only_the_bootstrap_key_provisions_itself_and_streams_as_itself(seed):
    bootstrap, key = create_bootstrap(seed, lot="batch-7")
    claimant = Claimant(seed, bootstrap, key)
    device_id = unique("pi")
    answer = claimant.ask(device_id, serial="00000000a1b2c3d4")
    assert answer["decision"] == "ALLOWED", answer
    assert answer["device_id"] == device_id and answer["num_id"], answer
    assert answer["mqtt"]["client_id"] == f"{seed.registry.name}/devices/{device_id}"

    device = Device(seed.registry, device_id, answer["num_id"], answer["_key"], {})
    client = seed.world.connected(device)
    client.publish_acked(device.events(), b'{"temperature_c": 20.0}')
    got = seed.ps.drain(seed.subs["sensordata"], 1)
    assert_telemetry(got, {b'{"temperature_c": 20.0}': device.attributes("")})
    described = seed.admin.get_device(device.name)
    assert described["metadata"]["provisionedBy"] == bootstrap
    assert described["metadata"]["serial"] == "00000000a1b2c3d4"
    assert described["metadata"]["lot"] == "batch-7"
    assert decisions(seed, bootstrap=bootstrap)[0]["decision"] == "ALLOWED"

    # Revocation: denylisting its serial blocks the device and cuts its connection.
    policy(seed, "DENY", "SERIAL", "00000000a1b2c3d4", "compromised")
    client.wait_closed(2.5, what="the provisioned device's connection to close after denylisting")


@pytest.mark.parametrize("case", ["denylisted", "not_allowlisted", "reused", "disabled", "expired", "quota"])
def test_refusals_reach_the_device_and_the_decisions_list_with_their_reason(seed, case):
    fields = {}
    if case == "expired":
        fields["expireTime"] = "2020-01-01T00:00:00Z"
    if case == "quota":
        fields["deviceQuota"] = 1
    bootstrap, key = create_bootstrap(seed, **fields)
    serial = unique("serial")
    expected = {"denylisted": "DENYLISTED", "not_allowlisted": "NOT_ALLOWLISTED", "reused": "ALREADY_REGISTERED",
                "disabled": "BOOTSTRAP_DISABLED", "expired": "BOOTSTRAP_EXPIRED", "quota": "QUOTA_EXCEEDED"}[case]
    claimant = Claimant(seed, bootstrap, key)
    device_id = unique("pi")
    if case == "denylisted":
        policy(seed, "DENY", "SERIAL", serial, "abusive")
    if case == "not_allowlisted":
        policy(seed, "ALLOW", "SERIAL", unique("other-serial"))
    if case in ("reused", "quota"):
        assert claimant.ask(device_id if case == "reused" else unique("pi"), serial=unique("s"))["decision"] == "ALLOWED"
    if case == "disabled":
        seed.admin.ok("POST", f"{seed.registry.name}/bootstraps/{bootstrap}:disable", body={})
    answer = claimant.ask(device_id, serial=serial)
    assert answer["decision"] == "DENIED" and answer["reason"] == expected, answer
    listed = decisions(seed, bootstrap=bootstrap, reason=expected)
    assert listed and listed[0]["request_id"] == answer["request_id"], listed
    if case == "denylisted":
        assert "abusive" in answer["message"], answer


@pytest.mark.parametrize("attempt", ["publish_telemetry", "subscribe_to_a_device", "subscribe_to_other_answers"])
def test_a_bootstrap_connection_that_steps_outside_its_topics_is_closed(seed, attempt):
    bootstrap, key = create_bootstrap(seed)
    claimant = Claimant(seed, bootstrap, key)
    assert claimant.client.connect() == 0
    if attempt == "publish_telemetry":
        claimant.client.publish(f"/devices/{unique('x')}/events", b"sneaky", qos=1)
    elif attempt == "subscribe_to_a_device":
        claimant.client.client.subscribe(f"/devices/{unique('x')}/commands/#", 1)
    else:  # every answer of the batch, not only the one to its own request
        claimant.client.client.subscribe(f"{claimant.prefix}/responses/#", 1)
    claimant.client.wait_closed(10, what=f"the close of a bootstrap connection that tried to {attempt}")


def test_a_wrong_bootstrap_key_is_refused_with_connack_5(seed):
    bootstrap, _ = create_bootstrap(seed)
    other = DeviceKey.es256().private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()).decode()
    claimant = Claimant(seed, bootstrap, other)
    claimant.client.expect_refused(5)


def test_repeating_an_allowed_request_with_the_same_key_is_answered_again(seed):
    bootstrap, key = create_bootstrap(seed, deviceQuota=1)
    claimant = Claimant(seed, bootstrap, key)
    device_key = DeviceKey.es256()
    device_id = unique("pi")
    first = claimant.ask(device_id, serial=unique("s"), key=device_key)
    again = claimant.ask(device_id, serial=unique("s"), key=device_key)  # the first answer was "lost"
    assert first["decision"] == again["decision"] == "ALLOWED", (first, again)
    assert first["num_id"] == again["num_id"]
    # Same id, another key: that is someone else.
    other = claimant.ask(device_id, serial=unique("s"))
    assert other["decision"] == "DENIED", other


# ------------------------------------------------------------------------------------------------------------
# the operator webhook and the HTTP form of the request

import http.server  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import requests  # noqa: E402


class Webhook:
    """A local webhook answering per device id: allow, deny, slow (past the timeout), 500, or a 302 redirect
    to /final (which would allow, and counts its hits in `final_hits`)."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.final_hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/final":
                    outer.final_hits += 1
                    body = {"claims": {"device_id": "allowed-after-redirect"}}
                else:
                    outer.seen.append(body)
                device = body["claims"]["device_id"]
                if device.startswith("redirect"):
                    self.send_response(302)
                    self.send_header("Location", "/final")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if device.startswith("slow"):
                    time.sleep(1.5)
                if device.startswith("broken"):
                    self.send_response(500)
                    self.end_headers()
                    return
                answer = {"allow": not device.startswith("nope"), "reason": "not on the shipping manifest"}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


def test_the_webhook_decides_last_and_timeouts_and_errors_deny(seed, webhook):
    seed.admin.ok("PUT", f"{seed.registry.name}/provisioningWebhook",
                  body={"url": webhook.url, "timeoutMs": 500, "onError": "DENY"})
    bootstrap, key = create_bootstrap(seed, lot="lot-w")
    claimant = Claimant(seed, bootstrap, key)
    assert claimant.ask(unique("ok"), serial=unique("s"))["decision"] == "ALLOWED"
    assert webhook.seen[-1]["lot"] == "lot-w" and webhook.seen[-1]["bootstrap"] == bootstrap
    for prefix, reason in [("nope", "WEBHOOK_DENIED"), ("slow", "WEBHOOK_TIMEOUT"), ("broken", "WEBHOOK_ERROR")]:
        answer = claimant.ask(unique(prefix), serial=unique("s"))
        assert answer["decision"] == "DENIED" and answer["reason"] == reason, answer
    assert "shipping manifest" in decisions(seed, reason="WEBHOOK_DENIED")[0]["message"]
    # onError ALLOW: an unanswered webhook lets the device in.
    seed.admin.ok("PUT", f"{seed.registry.name}/provisioningWebhook",
                  body={"url": webhook.url, "timeoutMs": 500, "onError": "ALLOW"})
    assert claimant.ask(unique("slow"), serial=unique("s"))["decision"] == "ALLOWED"


def test_devices_without_mqtt_provision_over_https(seed):
    bootstrap, key = create_bootstrap(seed)
    token = jwt.encode({"aud": seed.world.project, "iat": int(time.time()), "exp": int(time.time()) + 600},
                       key, algorithm="ES256")
    base = f"https://{seed.world.endpoints['device_http'].replace('0.0.0.0', '127.0.0.1')}/v1"
    url = f"{base}/{seed.registry.name}/bootstraps/{bootstrap}:provision"
    device_key = DeviceKey.es256()
    body = {"serial": unique("s"), "device_id": unique("http-pi"),
            "public_key": {"format": "ES256_PEM", "key": device_key.public_pem()}}
    answer = requests.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, verify=seed.world.ca,
                           timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["decision"] == "ALLOWED", answer.text
    bad = requests.post(url, json=body, headers={"Authorization": "Bearer not.a.jwt"}, verify=seed.world.ca, timeout=10)
    assert bad.status_code == 401, bad.text


def test_a_device_that_cannot_make_keys_gets_a_server_made_one(seed):
    bootstrap, key = create_bootstrap(seed)
    token = jwt.encode({"aud": seed.world.project, "iat": int(time.time()), "exp": int(time.time()) + 600},
                       key, algorithm="ES256")
    base = f"https://{seed.world.endpoints['device_http'].replace('0.0.0.0', '127.0.0.1')}/v1"
    device_id = unique("keyless")
    answer = requests.post(f"{base}/{seed.registry.name}/bootstraps/{bootstrap}:provision",
                           json={"serial": unique("s"), "device_id": device_id, "generate_key": "ES256"},
                           headers={"Authorization": f"Bearer {token}"}, verify=seed.world.ca, timeout=10).json()
    assert answer["decision"] == "ALLOWED" and answer["private_key"].startswith("-----BEGIN PRIVATE KEY-----"), answer
    # The private key works as the device's credential, and the stored decision does not hold it.
    private = serialization.load_pem_private_key(answer["private_key"].encode(), password=None)
    device = Device(seed.registry, device_id, answer["num_id"], DeviceKey("ES256", private), {})
    seed.world.connected(device).publish_acked(device.events(), b"from a server-made key")
    assert all("private_key" not in d for d in decisions(seed, bootstrap=bootstrap))


def test_a_bootstrap_over_its_rate_is_refused_with_rate_limited(seed):
    bootstrap, key = create_bootstrap(seed, maxProvisionsPerSecond=1)
    claimant = Claimant(seed, bootstrap, key)
    answers = [claimant.ask(unique("pi"), serial=unique("s")) for _ in range(3)]
    reasons = [a.get("reason", a["decision"]) for a in answers]
    assert reasons[0] == "ALLOWED" and "RATE_LIMITED" in reasons[1:], reasons


def test_a_csr_earns_a_certificate_from_perchs_ca_that_the_device_connects_with(seed):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    bootstrap, key = create_bootstrap(seed)
    claimant = Claimant(seed, bootstrap, key)
    assert claimant.client.connect() == 0
    device_key = DeviceKey.es256()
    device_id = unique("csr-pi")
    # The device asks for more than a device certificate: a host name and CA powers. It gets neither.
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "perch.example.com")]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("perch.example.com")]), critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(device_key.private_key, hashes.SHA256())
           .public_bytes(serialization.Encoding.PEM).decode())
    rid = uuid.uuid4().hex
    prefix = claimant.prefix
    claimant.client.subscribe(f"{prefix}/responses/{rid}", qos=1)
    claimant.client.publish_acked(f"{prefix}/requests/{rid}",
                                  json.dumps({"serial": unique("s"), "device_id": device_id, "csr": csr}).encode())
    msg = claimant.client.wait(lambda: next((m for m in claimant.client.messages if m.topic.endswith(rid)), None), 10,
                               "the answer to the CSR")
    answer = json.loads(msg.payload)
    assert answer["decision"] == "ALLOWED", answer
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    ca = x509.load_pem_x509_certificate(open(seed.world.ca, "rb").read())
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert cert.public_key().public_numbers() == device_key.private_key.public_key().public_numbers()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device_id
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    described = seed.admin.get_device(f"{seed.registry.name}/devices/{device_id}")
    assert described["credentials"][0]["publicKey"]["format"] == "ES256_X509_PEM", described
    device = Device(seed.registry, device_id, answer["num_id"], device_key, {})
    seed.world.connected(device).publish_acked(device.events(), b"certified")


# ------------------------------------------------------------------------------------------------------------
# re-provisioning held for an operator, and revocation of one device among many
def approvals(seed, **params) -> list[dict]:
    return seed.admin.ok("GET", f"{seed.registry.name}/provisioningApprovals", params=params)["approvals"]


def test_require_approval_holds_reprovisioning_until_an_operator_decides(seed):
    bootstrap, key = create_bootstrap(seed, reprovisionPolicy="REQUIRE_APPROVAL")
    claimant = Claimant(seed, bootstrap, key)
    device_id, other_id = unique("pi"), unique("pi")
    serial, other_serial = unique("s"), unique("s")  # re-provisioning needs the serial provisioned
    first = claimant.ask(device_id, serial=serial)
    assert first["decision"] == "ALLOWED", first
    assert claimant.ask(other_id, serial=other_serial)["decision"] == "ALLOWED"

    # The device was reflashed and asks again with a new key: held, and asked again it stays held.
    new_key = DeviceKey.es256()
    for _ in range(2):
        held = claimant.ask(device_id, serial=serial, key=new_key)
        assert held["decision"] == "DENIED" and held["reason"] == "PENDING_APPROVAL", held
    pending = [a for a in approvals(seed, state="PENDING") if a["deviceId"] == device_id]
    assert len(pending) == 1 and pending[0]["bootstrap"] == bootstrap, pending

    approved = seed.admin.ok("POST", f"{seed.registry.name}/provisioningApprovals/{device_id}:approve",
                             body={"keyFingerprint": pending[0]["keyFingerprint"]})
    assert approved["state"] == "APPROVED", approved
    again = claimant.ask(device_id, serial=serial, key=new_key)
    assert again["decision"] == "ALLOWED" and again["num_id"] == first["num_id"], again
    device = Device(seed.registry, device_id, first["num_id"], new_key, {})
    seed.world.connected(device).publish_acked(device.events(), b"after approval")
    old = Device(seed.registry, device_id, first["num_id"], first["_key"], {})
    seed.world.mqtt(old).expect_refused(5)
    assert any(d["rule"] == "operator approval" and d["decision"] == "ALLOWED"
               for d in decisions(seed, bootstrap=bootstrap)), decisions(seed, bootstrap=bootstrap)

    # The other device's new key is denied: retries with it are refused for good.
    other_key = DeviceKey.es256()
    assert claimant.ask(other_id, serial=other_serial, key=other_key)["reason"] == "PENDING_APPROVAL"
    other_pending = [a for a in approvals(seed, state="PENDING") if a["deviceId"] == other_id]
    denied = seed.admin.ok("POST", f"{seed.registry.name}/provisioningApprovals/{other_id}:deny",
                           body={"keyFingerprint": other_pending[0]["keyFingerprint"]})
    assert denied["state"] == "DENIED", denied
    refused = claimant.ask(other_id, serial=other_serial, key=other_key)
    assert refused["decision"] == "DENIED" and refused["reason"] == "APPROVAL_DENIED", refused
    assert decisions(seed, bootstrap=bootstrap, reason="APPROVAL_DENIED")
    # Deciding twice is an error the operator can read.
    again = seed.admin.request("POST", f"{seed.registry.name}/provisioningApprovals/{other_id}:approve",
                               body={"keyFingerprint": other_pending[0]["keyFingerprint"]})
    assert again.status_code == 400 and "already DENIED" in again.text, again.text


@pytest.mark.parametrize("revocation", ["block", "delete", "denylist_device_id"])
def test_revoking_one_of_100_connected_devices_cuts_it_off_within_2s_while_the_others_keep_publishing(
        seed, revocation):
    bootstrap, key = create_bootstrap(seed, deviceQuota=100)
    devices = []
    for n in range(100):
        if n % 10 == 0:  # a bootstrap connection may ask 10 times
            claimant = Claimant(seed, bootstrap, key)
        answer = claimant.ask(unique("fleet"), serial=unique("s"))
        assert answer["decision"] == "ALLOWED", answer
        devices.append(Device(seed.registry, answer["device_id"], answer["num_id"], answer["_key"], {}))
    clients = [seed.world.connected(d) for d in devices]
    for d, c in zip(devices, clients):
        c.publish_acked(d.events(), b"before")

    victim, victim_client = devices[37], clients[37]
    revoked_at = time.monotonic()
    if revocation == "block":
        seed.admin.patch_device(victim.name, {"blocked": True}, "blocked")
    elif revocation == "delete":
        seed.admin.delete_device(victim.name)
    else:
        policy(seed, "DENY", "DEVICE_ID", victim.id, "compromised")
    victim_client.wait_closed(5.0, what=f"the revoked ({revocation}) device's connection to close")
    cut_off = victim_client.closed_at - revoked_at
    assert cut_off <= 2.0, cut_off
    print(f"{revocation}: device cut off {cut_off * 1000:.0f} ms after the admin call was sent")

    others = [(d, c) for d, c in zip(devices, clients) if c is not victim_client]
    assert len(others) == 99
    mids = [(c, c.publish(d.events(), b"after").mid) for d, c in others]
    for c, mid in mids:
        c.wait_puback(mid)
    assert not any(c.closed for _, c in others)
    # The revoked device cannot come back.
    seed.world.mqtt(victim).expect_refused(5)


def test_disabling_a_bootstrap_stops_new_claims_but_leaves_its_devices_connected(seed):
    bootstrap, key = create_bootstrap(seed)
    claimant = Claimant(seed, bootstrap, key)
    answer = claimant.ask(unique("pi"), serial=unique("s"))
    assert answer["decision"] == "ALLOWED", answer
    device = Device(seed.registry, answer["device_id"], answer["num_id"], answer["_key"], {})
    client = seed.world.connected(device)

    seed.admin.ok("POST", f"{seed.registry.name}/bootstraps/{bootstrap}:disable", body={})
    # Every request is checked against the bootstrap as it is now: on the connection that was
    # already open, and on a new one.
    for asker in (claimant, Claimant(seed, bootstrap, key)):
        refused = asker.ask(unique("pi"), serial=unique("s"))
        assert refused["decision"] == "DENIED" and refused["reason"] == "BOOTSTRAP_DISABLED", refused
    client.publish_acked(device.events(), b"still here")
    assert not client.closed
    assert seed.admin.get_device(device.name).get("blocked") is not True
