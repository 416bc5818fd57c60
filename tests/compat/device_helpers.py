"""Helpers for the device-bridge compatibility tests (test_mqtt.py, test_http_bridge.py): device keys and JWTs, the
cloudiot admin REST API driven with `requests`, a paho-mqtt 2.2.0 client that records every callback, raw MQTT
packets for hostile-input tests, and the HTTPS device bridge.

What the pinned client libraries really do (read from their source in the venv; the tests rely on it):
- paho-mqtt 2.2.0 with `CallbackAPIVersion.VERSION2` reports a MQTT 3.1.1 CONNACK to `on_connect` as a
  `ReasonCode` converted to MQTT 5 numbering (`_packet.convert_connack_rc_to_reason_code`): 5 becomes
  "Not authorized" (value 135), 4 "Bad user name or password", 2 "Client identifier not valid", 1 "Unsupported
  protocol version" (132); `int(reason)`/`.value` is therefore NOT the 3.1.1 code — compare names
  (`CONNACK_CODES` maps them back). A refused CONNECT then fires `on_disconnect`.
- A 3.1.1 client that gets CONNACK 1 silently downgrades to MQTT 3.1 and reconnects, unless
  `reconnect_on_failure=False`, in which case it drops the connection without calling `on_connect`. Every client
  here is built with `reconnect_on_failure=False`: a closed connection stays closed (the loop thread ends) and the
  test sees exactly one `on_disconnect`.
- `subscribe()`/`publish()` write to the socket as soon as `connect()` has returned, i.e. before CONNACK — the
  IoT Core samples subscribe right after `connect()`, so the server sees SUBSCRIBE pipelined behind CONNECT.
- Incoming QoS 1 PUBLISH: paho calls `on_message`, then sends PUBACK (no manual ack).
- `tls_set(ca_certs=…, tls_version=ssl.PROTOCOL_TLSv1_2)` builds an `ssl.SSLContext(PROTOCOL_TLSv1_2)` with
  CERT_REQUIRED and hostname checking on (IP SANs match an IP host).
- PyJWT 2.x `jwt.encode(…, algorithm="ES256")` emits the raw R‖S signature (64 bytes), header
  `{"alg":"ES256","typ":"JWT"}`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import shutil
import socket
import ssl
import struct
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Optional, Sequence

import jwt
import paho.mqtt.client as mqtt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from pubsub_helpers import wait_until  # noqa: F401 - re-exported for the device tests

LOCATION = "us-central1"
REGISTRY_ID = "RaspberryPiDevices"
TELEMETRY_LIMIT = 262_144  # SPEC §4.5 / §4.10: 256 KB
STATE_LIMIT = 65_536  # SPEC §4.6: 64 KB
REQUEST_TIMEOUT = 20.0  # per HTTP request; a healthy local server answers in milliseconds
WAIT = 10.0  # default deadline for something that should happen "now"
ATTRIBUTE_NAMES = ("deviceId", "deviceNumId", "deviceRegistryId", "deviceRegistryLocation", "projectId", "subFolder")

# paho's MQTT-5-style CONNACK reason names -> the MQTT 3.1.1 return code on the wire.
CONNACK_CODES = {
    "Success": 0,
    "Unsupported protocol version": 1,
    "Client identifier not valid": 2,
    "Server unavailable": 3,
    "Bad user name or password": 4,
    "Not authorized": 5,
}


# ------------------------------------------------------------------------------------------------------------
# bytes


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def urlsafe_b64(data: bytes) -> str:
    """What the HTTP sample sends: `base64.urlsafe_b64encode(...)` (padded, `-_` alphabet)."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def parse_time(text: str) -> dt.datetime:
    """RFC 3339 (any fraction length, `Z` or offset) -> aware datetime."""
    head, frac, tz = text, "", "+00:00"
    if head.endswith("Z"):
        head = head[:-1]
    elif len(head) > 6 and head[-6] in "+-" and head[-3] == ":":
        head, tz = head[:-6], head[-6:]
    if "." in head:
        head, frac = head.split(".", 1)
    stamp = dt.datetime.fromisoformat(head + tz)
    return stamp + dt.timedelta(microseconds=int((frac + "000000")[:6])) if frac else stamp


# ------------------------------------------------------------------------------------------------------------
# keys and JWTs (SPEC §3)


class DeviceKey:
    """A device key pair; `alg` is the JWT algorithm it signs with."""

    def __init__(self, alg: str, private_key) -> None:
        self.alg = alg
        self.private_key = private_key

    @classmethod
    def es256(cls) -> "DeviceKey":
        return cls("ES256", ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def rs256(cls) -> "DeviceKey":
        return cls("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def public_pem(self) -> str:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def certificate_pem(self, common_name: str = "unused") -> str:
        """A self-signed X.509v3 certificate around the public key (what `openssl req -x509 …` gives the samples)."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        start = now_utc() - dt.timedelta(days=1)
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(self.private_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + dt.timedelta(days=365))
                .sign(self.private_key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def credential(self, fmt: Optional[str] = None, expiration_time: Optional[str] = None) -> dict:
        """A DeviceCredential; `fmt` defaults to the bare-key format (ES256_PEM / RSA_PEM)."""
        fmt = fmt or ("ES256_PEM" if self.alg == "ES256" else "RSA_PEM")
        key = self.certificate_pem() if fmt.endswith("X509_PEM") else self.public_pem()
        credential: dict = {"publicKey": {"format": fmt, "key": key}}
        if expiration_time:
            credential["expirationTime"] = expiration_time
        return credential

    def jwt(self, audience: Any, **kwargs) -> str:
        return make_jwt(self, audience, **kwargs)


def make_jwt(key: DeviceKey, audience: Any, *, iat: Optional[float] = None, exp: Optional[float] = None,
             lifetime: float = 20 * 60, alg: Optional[str] = None, extra: Optional[dict] = None,
             omit: Sequence[str] = ()) -> str:
    """The samples' token: `{"iat": now, "exp": now + 20 min, "aud": project_id}` signed with PyJWT.

    `iat`/`exp` are absolute epoch seconds (default now / iat + lifetime); `omit` drops claims."""
    iat = int(time.time()) if iat is None else iat
    exp = iat + lifetime if exp is None else exp
    claims = {"iat": int(iat), "exp": int(exp), "aud": audience, **(extra or {})}
    for name in omit:
        claims.pop(name, None)
    return jwt.encode(claims, key.private_key, algorithm=alg or key.alg)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_jwt(audience: str) -> str:
    """`alg: none` with an empty signature (SPEC §3: must be rejected)."""
    now = int(time.time())
    header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = _b64url(json.dumps({"iat": now, "exp": now + 1200, "aud": audience}).encode())
    return f"{header}.{claims}."


def hs256_jwt(audience: str, secret: bytes = b"not-a-device-key-but-32-bytes-long!") -> str:
    """HMAC-signed token (SPEC §3: only RS256/ES256 are allowed)."""
    now = int(time.time())
    return jwt.encode({"iat": now, "exp": now + 1200, "aud": audience}, secret, algorithm="HS256")


# ------------------------------------------------------------------------------------------------------------
# admin REST (cloudiot v1, SPEC §2) with `requests`


class AdminError(AssertionError):
    pass


class AdminRest:
    """The cloudiot v1 admin REST API spoken directly (proto3 JSON, camelCase), as the discovery client would."""

    def __init__(self, admin_url: str, token: Optional[str] = None) -> None:
        self.base = admin_url.rstrip("/") + "/v1/"
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only: never a proxy
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, name: str, *, params: Optional[dict] = None, body: Any = None) -> requests.Response:
        return self.session.request(method, self.base + name, params=params, json=body, timeout=REQUEST_TIMEOUT)

    def ok(self, method: str, name: str, **kwargs) -> dict:
        response = self.request(method, name, **kwargs)
        if response.status_code != 200:
            raise AdminError(f"{method} {name} -> {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else {}

    def close(self) -> None:
        self.session.close()

    # registries / devices
    def create_registry(self, project: str, body: dict, location: str = LOCATION) -> dict:
        return self.ok("POST", f"projects/{project}/locations/{location}/registries", body=body)

    def create_device(self, registry_name: str, body: dict) -> dict:
        return self.ok("POST", f"{registry_name}/devices", body=body)

    def get_device(self, name: str) -> dict:
        return self.ok("GET", name)

    def patch_device(self, name: str, body: dict, update_mask: str) -> dict:
        return self.ok("PATCH", name, params={"updateMask": update_mask}, body=body)

    def delete_device(self, name: str) -> None:
        self.ok("DELETE", name)

    def list_states(self, name: str, num_states: int = 0) -> list[dict]:
        params = {"numStates": num_states} if num_states else None
        return self.ok("GET", f"{name}/states", params=params).get("deviceStates", [])

    def list_config_versions(self, name: str) -> list[dict]:
        return self.ok("GET", f"{name}/configVersions").get("deviceConfigs", [])

    def modify_config(self, name: str, data: bytes, version_to_update: int = 0, throttle_wait: float = 5.0) -> dict:
        """modifyCloudToDeviceConfig. SPEC §2.3 throttles updates to 1/s/device measured from the device's last
        config ack (429 RESOURCE_EXHAUSTED): a 429 is retried until `throttle_wait` has passed."""
        body = {"versionToUpdate": str(version_to_update), "binaryData": b64(data)}
        deadline = time.monotonic() + throttle_wait
        while True:
            response = self.request("POST", f"{name}:modifyCloudToDeviceConfig", body=body)
            if response.status_code == 429 and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            if response.status_code != 200:
                raise AdminError(f"modifyCloudToDeviceConfig {name} -> {response.status_code}: {response.text}")
            return response.json()

    def send_command(self, name: str, data: bytes, subfolder: Optional[str] = None) -> requests.Response:
        body: dict = {"binaryData": b64(data)}
        if subfolder is not None:
            body["subfolder"] = subfolder
        return self.request("POST", f"{name}:sendCommandToDevice", body=body)


def error_status(response: requests.Response) -> tuple[int, str, str]:
    """(error.code, error.status, error.message) of a Google JSON error envelope (SPEC §8)."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"not a Google error envelope ({response.status_code}): {response.text[:500]!r}")
    return error.get("code"), error.get("status"), error.get("message", "")


def assert_error(response: requests.Response, http: int, status: str) -> str:
    assert response.status_code == http, f"wanted {http} {status}, got {response.status_code}: {response.text[:500]}"
    code, name, message = error_status(response)
    assert (code, name) == (http, status), f"error envelope {response.text[:500]}"
    return message


# ------------------------------------------------------------------------------------------------------------
# registries and devices


def seed_event_configs(project: str) -> list[dict]:
    """The seed project's routing: subfolder `temperature` -> topic temperature, everything else -> sensordata."""
    return [
        {"subfolderMatches": "temperature", "pubsubTopicName": f"projects/{project}/topics/temperature"},
        {"pubsubTopicName": f"projects/{project}/topics/sensordata"},
    ]


@dataclasses.dataclass
class Device:
    registry: "Registry"
    id: str
    num_id: str
    key: Optional[DeviceKey]
    resource: dict

    @property
    def project(self) -> str:
        return self.registry.project

    @property
    def name(self) -> str:
        """Admin resource name by string id."""
        return f"{self.registry.name}/devices/{self.id}"

    @property
    def client_id(self) -> str:
        return f"{self.registry.name}/devices/{self.id}"

    def token(self, key: Optional[DeviceKey] = None, **kwargs) -> str:
        return (key or self.key).jwt(self.project, **kwargs)

    def events(self, subfolder: str = "") -> str:
        return f"/devices/{self.id}/events" + (f"/{subfolder}" if subfolder else "")

    @property
    def state_topic(self) -> str:
        return f"/devices/{self.id}/state"

    @property
    def config_topic(self) -> str:
        return f"/devices/{self.id}/config"

    @property
    def commands_topic(self) -> str:
        return f"/devices/{self.id}/commands"

    def attributes(self, sub_folder: str = "") -> dict:
        """SPEC §6.1: the six trusted attributes of a telemetry message from this device."""
        return {"deviceId": self.id, "deviceNumId": self.num_id, "deviceRegistryId": self.registry.id,
                "deviceRegistryLocation": self.registry.location, "projectId": self.project,
                "subFolder": sub_folder}


class Registry:
    def __init__(self, admin: AdminRest, project: str, registry_id: str, location: str, resource: dict) -> None:
        self.admin = admin
        self.project = project
        self.id = registry_id
        self.location = location
        self.resource = resource

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/registries/{self.id}"

    def add_device(self, device_id: str, key: Optional[DeviceKey] = None, *, fmt: Optional[str] = None,
                   credentials: Optional[list] = None, **fields) -> Device:
        """Create a device; by default with a fresh ES256 key registered as ES256_PEM."""
        if credentials is None:
            key = key or DeviceKey.es256()
            credentials = [key.credential(fmt)]
        body = {"id": device_id, "credentials": credentials, **fields}
        resource = self.admin.create_device(self.name, body)
        assert resource.get("numId"), f"created device has no numId: {resource}"
        return Device(self, device_id, resource["numId"], key, resource)


# ------------------------------------------------------------------------------------------------------------
# paho-mqtt client that records everything


@dataclasses.dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    dup: bool
    retain: bool
    at: float
    mid: int = -1  # paho's message id: what `client.ack(mid, qos)` takes under manual acks


class MqttDevice:
    """One paho-mqtt 2.2.0 client (CallbackAPIVersion.VERSION2, MQTT 3.1.1 unless told otherwise) with every
    callback recorded under one condition variable, so tests wait on predicates with deadlines."""

    def __init__(self, host: str, port: int, client_id: str, password: Optional[str], *,
                 username: Optional[str] = "unused", ca: Optional[str] = None, keepalive: int = 60,
                 protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv311, max_inflight: int = 20) -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self.client_id = client_id
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                                  reconnect_on_failure=False)
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca:
            self.client.tls_set(ca_certs=ca, tls_version=ssl.PROTOCOL_TLSv1_2)
        self.client.max_inflight_messages_set(max_inflight)
        self._cond = threading.Condition()
        self.connack: Optional[int] = None  # MQTT 3.1.1 return code
        self.connack_reason: str = ""  # paho's ReasonCode name, e.g. "Not authorized"
        self.connack_flags = None
        self.closed_at: Optional[float] = None
        self.close_reason: str = ""
        self.pubacked: set[int] = set()  # mids paho reported in on_publish: PUBACK for QoS 1 (no QoS 0 used)
        self.subacks: dict[int, list[int]] = {}
        self.unsubacks: set[int] = set()
        self.messages: list[Received] = []
        self._started = False
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_message = self._on_message

    # --- callbacks (paho's network thread) ------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self.connack_reason = str(reason_code)
            self.connack = CONNACK_CODES.get(self.connack_reason, -1)
            self.connack_flags = flags
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            if self.closed_at is None:
                self.closed_at = time.monotonic()
                self.close_reason = str(reason_code)
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self.pubacked.add(mid)
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self.subacks[mid] = [rc.value for rc in reason_codes]
            self._cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self.unsubacks.add(mid)
            self._cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        with self._cond:
            self.messages.append(Received(message.topic, bytes(message.payload), message.qos, bool(message.dup),
                                          bool(message.retain), time.monotonic(), message.mid))
            self._cond.notify_all()

    # --- waiting --------------------------------------------------------------------------------------------
    def wait(self, predicate: Callable[[], Any], timeout: float, what: str, *, fail_on_close: bool = False) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                if fail_on_close and self.closed_at is not None:
                    raise AssertionError(f"{self.client_id}: connection closed ({self.close_reason}) while waiting "
                                         f"for {what}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.client_id}: timed out after {timeout}s waiting for {what}")
                self._cond.wait(min(remaining, 0.1))

    @property
    def closed(self) -> bool:
        with self._cond:
            return self.closed_at is not None

    # --- connection -----------------------------------------------------------------------------------------
    def connect(self, timeout: float = WAIT, subscribe: Iterable[tuple[str, int]] = ()) -> Optional[int]:
        """TCP (+TLS) + CONNECT, then optional SUBSCRIBEs written before CONNACK is read (like the samples), then
        the network thread. Returns the CONNACK return code, or None if the server closed without one."""
        self.client.connect(self.host, self.port, keepalive=self.keepalive)
        self._sub_mids = [self.client.subscribe(topic, qos)[1] for topic, qos in subscribe]
        self.client.loop_start()
        self._started = True
        self.wait(lambda: self.connack is not None or self.closed_at is not None, timeout, "CONNACK")
        return self.connack

    def expect_accepted(self, **kwargs) -> "MqttDevice":
        code = self.connect(**kwargs)
        why = self.connack_reason or "closed without CONNACK: " + self.close_reason
        assert code == 0, f"{self.client_id}: CONNACK {code} ({why}), wanted 0 Connection Accepted"
        assert self.connack_flags.session_present is False, "SPEC §4.2: session_present must be 0"
        return self

    def expect_refused(self, code: int, timeout: float = WAIT) -> None:
        got = self.connect(timeout=timeout)
        assert got == code, (f"{self.client_id}: CONNACK {got} ({self.connack_reason or 'closed without CONNACK'}),"
                             f" wanted {code}")
        self.wait_closed(timeout, what="the close after a refused CONNACK")

    def close(self) -> None:
        try:
            if self._started and not self.closed:
                self.client.disconnect()
        finally:
            if self._started:
                self.client.loop_stop()
                self._started = False

    # --- publish / subscribe --------------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 1) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos)

    def wait_puback(self, mids: Iterable[int] | int, timeout: float = WAIT) -> None:
        want = {mids} if isinstance(mids, int) else set(mids)
        self.wait(lambda: want <= self.pubacked, timeout, f"PUBACK for {len(want)} message(s)", fail_on_close=True)

    def publish_acked(self, topic: str, payload: bytes, timeout: float = WAIT) -> int:
        """QoS 1 publish that must be PUBACKed while the connection stays open."""
        info = self.publish(topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"paho could not send: {mqtt.error_string(info.rc)}"
        self.wait_puback(info.mid, timeout)
        return info.mid

    def subscribe(self, topic: str, qos: int = 1, timeout: float = WAIT) -> list[int]:
        """SUBSCRIBE and wait for SUBACK; returns the granted QoS list."""
        rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"paho could not send SUBSCRIBE: {mqtt.error_string(rc)}"
        return self.wait(lambda: self.subacks.get(mid), timeout, f"SUBACK for {topic}", fail_on_close=True)

    def suback(self, mid: int, timeout: float = WAIT) -> list[int]:
        return self.wait(lambda: self.subacks.get(mid), timeout, f"SUBACK mid {mid}", fail_on_close=True)

    def wait_message(self, predicate: Callable[[Received], bool] = lambda m: True, timeout: float = WAIT,
                     what: str = "a message", start: int = 0) -> Received:
        """The first received message (from index `start`) matching `predicate`."""
        def find():
            return next((m for m in self.messages[start:] if predicate(m)), None)
        return self.wait(find, timeout, what)

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.messages)

    def wait_closed(self, timeout: float = WAIT, what: str = "the server to close the connection") -> float:
        """Wait until the connection is closed; returns the monotonic time it was noticed."""
        return self.wait(lambda: self.closed_at, timeout, what)


def mqtt_address(endpoints: dict, key: str = "mqtt") -> tuple[str, int]:
    address = endpoints.get(key)
    assert address, f"endpoints.json has no {key!r} address: {endpoints}"
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


# ------------------------------------------------------------------------------------------------------------
# a project on a bridge server


class DeviceWorld:
    """Everything one test needs on one server: admin REST, (optionally) Pub/Sub clients, registries, devices and
    MQTT clients — closed at teardown."""

    def __init__(self, server, project: str, ps=None) -> None:
        self.server = server
        self.project = project
        self.ps = ps
        self.admin = AdminRest(server.admin_url, token=None if server.dev else server.token)
        self.clients: list[MqttDevice] = []
        self.sessions: list[requests.Session] = []

    @property
    def endpoints(self) -> dict:
        return self.server.endpoints

    @property
    def ca(self) -> str:
        return self.endpoints["ca"]

    def close(self) -> None:
        for client in self.clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - teardown must not mask the test's own failure
                pass
        self.clients.clear()
        for session in self.sessions:
            session.close()
        self.admin.close()

    # --- Pub/Sub ------------------------------------------------------------------------------------------
    def seed_topics(self) -> dict:
        """Topics temperature and sensordata with one pull subscription each (created before anything is
        published: Pub/Sub keeps nothing for a subscription that does not exist yet)."""
        assert self.ps is not None, "this world has no Pub/Sub clients"
        subs = {}
        for topic_id in ("temperature", "sensordata"):
            topic = self.ps.create_topic(topic_id)
            subs[topic_id] = self.ps.create_subscription(f"{topic_id}-sub", topic)
        return subs

    # --- registries ---------------------------------------------------------------------------------------
    def create_registry(self, registry_id: str = REGISTRY_ID, *, http: bool = False, mqtt_enabled: bool = True,
                        event_configs: Optional[list] = None, location: str = LOCATION, **fields) -> Registry:
        body = {
            "id": registry_id,
            "eventNotificationConfigs": seed_event_configs(self.project) if event_configs is None else event_configs,
            "httpConfig": {"httpEnabledState": "HTTP_ENABLED" if http else "HTTP_DISABLED"},
            **fields,
        }
        if not mqtt_enabled:  # unspecified = enabled (SPEC §1.4): only ever send the disabling value
            body["mqttConfig"] = {"mqttEnabledState": "MQTT_DISABLED"}
        if not body["eventNotificationConfigs"]:
            del body["eventNotificationConfigs"]
        resource = self.admin.create_registry(self.project, body, location)
        return Registry(self.admin, self.project, registry_id, location, resource)

    # --- MQTT ---------------------------------------------------------------------------------------------
    def mqtt(self, device: Optional[Device] = None, *, client_id: Optional[str] = None,
             password: Optional[str] = None, plain: bool = False, **kwargs) -> MqttDevice:
        """A (not yet connected) paho client for `device` over TLS (or the plain port), JWT from the device key
        unless `password` is given."""
        if client_id is None:
            client_id = device.client_id
        if password is None and device is not None:
            password = device.token()
        host, port = mqtt_address(self.endpoints, "mqtt_plain" if plain else "mqtt")
        client = MqttDevice(host, port, client_id, password, ca=None if plain else self.ca, **kwargs)
        self.clients.append(client)
        return client

    def connected(self, device: Device, **kwargs) -> MqttDevice:
        return self.mqtt(device, **kwargs).expect_accepted()

    # --- HTTP device bridge -------------------------------------------------------------------------------
    def http(self, version: str = "v1") -> "DeviceHttp":
        address = self.endpoints.get("device_http")
        assert address, f"endpoints.json has no 'device_http' address: {self.endpoints}"
        bridge = DeviceHttp(address, self.ca, version)
        self.sessions.append(bridge.session)
        return bridge


@dataclasses.dataclass
class Seed:
    """The seed project on a bridge server: topics temperature + sensordata with one pull subscription each, and
    registry RaspberryPiDevices routing subfolder `temperature` to its own topic and everything else to
    sensordata."""

    world: DeviceWorld
    registry: Registry
    subs: dict

    @classmethod
    def create(cls, world: DeviceWorld, *, http: bool = False) -> "Seed":
        subs = world.seed_topics()
        return cls(world, world.create_registry(http=http), subs)

    @property
    def ps(self):
        return self.world.ps

    @property
    def admin(self) -> AdminRest:
        return self.world.admin

    def device(self, device_id: str = "", key: Optional[DeviceKey] = None, **kwargs) -> Device:
        return self.registry.add_device(device_id or unique("pi"), key, **kwargs)


def wait_for_field(admin: AdminRest, name: str, predicate: Callable[[dict], Any], what: str,
                   timeout: float = WAIT) -> dict:
    """Poll GET device until `predicate(device)` is truthy (SPEC §1.3: last*Time fields may be batched)."""
    last: dict = {}

    def check():
        nonlocal last
        last = admin.get_device(name)
        return last if predicate(last) else None

    try:
        return wait_until(check, timeout, what, interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last device: {json.dumps(last)[:2000]}") from None


def assert_telemetry(received, expected: dict[bytes, dict]) -> None:
    """Pulled messages (ReceivedMessage) == expected {data: attributes}, byte-exact, each exactly once."""
    got = {}
    for r in received:
        data = bytes(r.message.data)
        assert data not in got, f"message delivered twice: {data[:80]!r}"
        got[data] = dict(r.message.attributes)
    assert set(got) == set(expected), f"data mismatch: got {[d[:60] for d in got]}, wanted {[d[:60] for d in expected]}"
    for data, attributes in expected.items():
        assert got[data] == attributes, f"attributes of {data[:60]!r}: {got[data]} != {attributes}"


# ------------------------------------------------------------------------------------------------------------
# HTTPS device bridge (SPEC §5)


class DeviceHttp:
    """`requests` against `https://{device_http}/v1` the way the HTTP sample calls it: `authorization: Bearer JWT`,
    `content-type: application/json`, `cache-control: no-cache`, verified against Perch's CA file."""

    def __init__(self, address: str, ca: str, version: str = "v1") -> None:
        self.base = f"https://{address}/{version}"
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = ca

    @staticmethod
    def headers(token: Optional[str]) -> dict:
        headers = {"content-type": "application/json", "cache-control": "no-cache"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return headers

    def device_url(self, device: Device, by_num_id: bool = False) -> str:
        r = device.registry
        return (f"{self.base}/projects/{r.project}/locations/{r.location}/registries/{r.id}/devices/"
                f"{device.num_id if by_num_id else device.id}")

    def publish_event(self, device: Device, body: dict, token: Optional[str], **kw) -> requests.Response:
        return self.session.post(self.device_url(device, **kw) + ":publishEvent", data=json.dumps(body),
                                 headers=self.headers(token), timeout=REQUEST_TIMEOUT)

    def set_state(self, device: Device, body: dict, token: Optional[str], **kw) -> requests.Response:
        return self.session.post(self.device_url(device, **kw) + ":setState", data=json.dumps(body),
                                 headers=self.headers(token), timeout=REQUEST_TIMEOUT)

    def get_config(self, device: Device, token: Optional[str], local_version: Any = 0,
                   param: str = "local_version", **kw) -> requests.Response:
        return self.session.get(f"{self.device_url(device, **kw)}/config?{param}={local_version}",
                                headers=self.headers(token), timeout=REQUEST_TIMEOUT)


# ------------------------------------------------------------------------------------------------------------
# raw MQTT bytes for hostile-input tests (plain port)


def remaining_length(n: int) -> bytes:
    """MQTT variable-length integer (1-4 bytes, max 268,435,455)."""
    assert 0 <= n <= 268_435_455
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(value: bytes | str) -> bytes:
    value = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(value)) + value


def connect_packet(client_id: str, password: Optional[str], username: str = "unused", keepalive: int = 60) -> bytes:
    flags = 0x02  # clean session
    payload = mqtt_string(client_id)
    if username is not None:
        flags |= 0x80
        payload += mqtt_string(username)
        if password is not None:
            flags |= 0x40
            payload += mqtt_string(password)
    variable = mqtt_string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body = variable + payload
    return bytes([0x10]) + remaining_length(len(body)) + body


def raw_socket(address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_within(sock: socket.socket, timeout: float) -> Optional[bytes]:
    """Read until the peer closes (EOF or reset). Returns what was read before the close, or None if the socket
    was still open after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return None
        except (ConnectionResetError, BrokenPipeError):
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def mosquitto(tool: str) -> Optional[str]:
    path = shutil.which(tool) or f"/usr/bin/{tool}"
    return path if os.access(path, os.X_OK) else None
