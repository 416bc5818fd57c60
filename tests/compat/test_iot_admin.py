"""Cloud IoT Core admin API (cloudiot v1, DeviceManager) against a real `perch serve`, with Google's own clients.

Most tests run once per client flavour (see iot_clients.py): google-api-python-client with the static discovery
document and with the document fetched from Perch, and google-cloud-iot 2.9.2 over REST and over gRPC.
SPEC.md §1, §2 and §9 (items 11 and 12) are the reference; "Perch choice" items are asserted as SPEC.md decides them.
"""

from __future__ import annotations

import copy
import os
import socket
import stat
import subprocess
import time

import google.auth.exceptions
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.auth.credentials import AnonymousCredentials

from iot_clients import FLAVOURS, DiscoveryAdmin, unb64
from perch_server import PerchServer

LOCATION = "us-central1"
REGISTRY_ID = "RaspberryPiDevices"

# Ids that break §1.2 `^[a-zA-Z][-a-zA-Z0-9._+~%]{2,254}$` / no `goog` prefix.
BAD_IDS = [
    pytest.param("goog-x", id="goog-prefix"),
    pytest.param("1abc", id="leading-digit"),
    pytest.param("a" * 256, id="256-chars"),
    pytest.param("a:b:c", id="colons"),
    pytest.param("ab", id="2-chars"),
]
EDGE_IDS = [
    pytest.param("abc", id="3-chars"),
    pytest.param("a" * 255, id="255-chars"),
    pytest.param("Ab-c.d_e+f~g%h", id="every-punctuation"),
]

# Config payloads with bytes whose standard and URL-safe base64 differ ("+/" vs "-_").
CONFIG_V2 = b'{"fan_on": true}\xfb\xff'
CONFIG_V3 = b'{"fan_on": false}\xfb\xef'


# ------------------------------------------------------------------------------------------------------------
# names, bodies, keys


def location_path(project: str) -> str:
    return f"projects/{project}/locations/{LOCATION}"


def registry_path(project: str, registry_id: str = REGISTRY_ID) -> str:
    return f"{location_path(project)}/registries/{registry_id}"


def seed_registry(project: str) -> dict:
    """The seed project's registry: temperature subfolder to its own topic, everything else to sensordata."""
    return {
        "id": REGISTRY_ID,
        "eventNotificationConfigs": [
            {"subfolderMatches": "temperature", "pubsubTopicName": f"projects/{project}/topics/temperature"},
            {"pubsubTopicName": f"projects/{project}/topics/sensordata"},
        ],
        "httpConfig": {"httpEnabledState": "HTTP_DISABLED"},
    }


def es256_public_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def rsa_public_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def es256_credential(pem: str | None = None) -> dict:
    return {"publicKey": {"format": "ES256_PEM", "key": pem or es256_public_pem()}}


def es256_device(device_id: str, **fields) -> dict:
    return {"id": device_id, "credentials": [es256_credential()], **fields}


def public_keys(device: dict) -> list[tuple[str, str]]:
    return [(c["publicKey"]["format"], c["publicKey"]["key"].strip()) for c in device.get("credentials", [])]


def device_ids(admin, parent: str) -> list[str]:
    return sorted(d["id"] for page in admin.list_devices_pages(parent) for d in page)


def config_versions(admin, device_name: str) -> list[tuple[str, bytes]]:
    return [(c["version"], unb64(c.get("binaryData", ""))) for c in admin.list_config_versions(device_name)]


def wait_out_config_rate_limit(since: float) -> None:
    """SPEC §2.3: at most one config update per second per device; wait until a second has passed since `since`."""
    remaining = since + 1.1 - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


@pytest.fixture
def registry(iot, project) -> str:
    """The seed registry, created with the test's own client; returns its name."""
    iot.create_registry(location_path(project), seed_registry(project))
    return registry_path(project)


# ------------------------------------------------------------------------------------------------------------
# registries


def test_create_registry_keeps_notification_configs_in_order_and_http_disabled(iot, project):
    body = seed_registry(project)

    created = iot.create_registry(location_path(project), body)

    assert created["id"] == REGISTRY_ID
    assert created["name"] == registry_path(project)
    assert created["eventNotificationConfigs"] == body["eventNotificationConfigs"]
    assert created["httpConfig"] == {"httpEnabledState": "HTTP_DISABLED"}
    assert iot.get_registry(registry_path(project)) == created
    listed = iot.list_registries(location_path(project))
    assert [(r["id"], r["name"]) for r in listed] == [(REGISTRY_ID, registry_path(project))]


def test_create_registry_twice_is_already_exists_and_keeps_the_first(iot, project):
    first = iot.create_registry(location_path(project), seed_registry(project))

    with iot.expect_error("ALREADY_EXISTS") as err:
        iot.create_registry(location_path(project), {"id": REGISTRY_ID})

    assert REGISTRY_ID in err.message
    assert iot.get_registry(registry_path(project)) == first
    assert len(iot.list_registries(location_path(project))) == 1


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_create_registry_with_invalid_id_is_invalid_argument(iot, project, bad_id):
    with iot.expect_error("INVALID_ARGUMENT") as err:
        iot.create_registry(location_path(project), {"id": bad_id})

    assert bad_id in err.message
    assert iot.list_registries(location_path(project)) == []


def test_unknown_registry_is_not_found_for_get_delete_and_its_devices(iot, project):
    missing = registry_path(project, "NoSuchRegistry")

    for call in (lambda: iot.get_registry(missing),
                 lambda: iot.delete_registry(missing),
                 lambda: iot.create_device(missing, es256_device("thermo-1")),
                 lambda: iot.list_devices_page(missing),
                 lambda: iot.get_device(f"{missing}/devices/thermo-1")):
        with iot.expect_error("NOT_FOUND") as err:
            call()
        assert "NoSuchRegistry" in err.message

    assert iot.list_registries(location_path(project)) == []


def test_delete_registry_is_refused_while_it_has_devices(iot, registry):
    device = iot.create_device(registry, es256_device("thermo-1"))

    with iot.expect_error("FAILED_PRECONDITION"):  # Perch choice, SPEC §2.3
        iot.delete_registry(registry)
    assert iot.get_registry(registry)["id"] == REGISTRY_ID

    iot.delete_device(device["name"])
    iot.delete_registry(registry)

    with iot.expect_error("NOT_FOUND"):
        iot.get_registry(registry)
    assert iot.list_registries(registry.rsplit("/registries/", 1)[0]) == []


# ------------------------------------------------------------------------------------------------------------
# devices: create, get, list


def test_create_device_with_es256_key_assigns_num_id_and_config_version_1(iot, registry):
    pem = es256_public_pem()

    device = iot.create_device(registry, {"id": "thermo-1", "credentials": [es256_credential(pem)]})

    num_id = device["numId"]
    assert isinstance(num_id, str) and num_id.isdigit()  # uint64 as a JSON string
    assert 0 < int(num_id) < 2**53  # Perch choice, SPEC §1.2: random and JS-safe
    assert device["id"] == "thermo-1"
    assert device["name"] == f"{registry}/devices/{num_id}"
    assert public_keys(device) == [("ES256_PEM", pem.strip())]
    assert device["config"]["version"] == "1"
    assert "cloudUpdateTime" in device["config"]
    assert device.get("blocked", False) is False


def test_get_device_by_string_id_and_by_num_id_is_the_same_device(iot, registry):
    created = iot.create_device(registry, es256_device("thermo-1", metadata={"room": "attic"}))

    by_id = iot.get_device(f"{registry}/devices/thermo-1")
    by_num_id = iot.get_device(f"{registry}/devices/{created['numId']}")

    assert by_id == by_num_id
    assert by_id["name"] == f"{registry}/devices/{created['numId']}"
    assert (by_id["id"], by_id["numId"]) == ("thermo-1", created["numId"])
    assert public_keys(by_id) == public_keys(created)
    assert by_id["metadata"] == {"room": "attic"}
    assert by_id["config"]["version"] == "1"


def test_devices_get_distinct_num_ids(iot, registry):
    a = iot.create_device(registry, es256_device("thermo-1"))
    b = iot.create_device(registry, es256_device("thermo-2"))

    assert a["numId"] != b["numId"]


def test_list_devices_with_field_mask_in_pages_of_two(iot, registry):
    created = {
        d["id"]: d for d in (
            iot.create_device(registry, es256_device("sensor-a")),
            iot.create_device(registry, es256_device("sensor-b", blocked=True)),
            iot.create_device(registry, es256_device("sensor-c", metadata={"room": "attic"})),
            iot.create_device(registry, {"id": "sensor-d", "gatewayConfig": {
                "gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"}}),
            iot.create_device(registry, es256_device("sensor-e")),
        )
    }

    pages = iot.list_devices_pages(registry, page_size=2, field_mask=["blocked", "metadata", "gateway_config"])

    assert [len(page) for page in pages] == [2, 2, 1]
    listed = {d["id"]: d for page in pages for d in page}
    assert sorted(listed) == sorted(created)
    for device_id, device in listed.items():
        assert device["numId"] == created[device_id]["numId"]  # id and numId are always returned
        assert "credentials" not in device and "config" not in device  # not in the mask
    assert listed["sensor-b"]["blocked"] is True
    assert listed["sensor-a"].get("blocked", False) is False
    assert listed["sensor-c"]["metadata"] == {"room": "attic"}
    assert listed["sensor-d"]["gatewayConfig"]["gatewayType"] == "GATEWAY"
    assert listed["sensor-d"]["gatewayConfig"]["gatewayAuthMethod"] == "ASSOCIATION_ONLY"


def test_list_devices_page_tokens_walk_every_device_once_and_end_empty(iot, registry):
    for device_id in ("node-1", "node-2", "node-3"):
        iot.create_device(registry, es256_device(device_id))

    first, token = iot.list_devices_page(registry, page_size=2)
    assert len(first) == 2 and token
    second, token = iot.list_devices_page(registry, page_size=2, page_token=token)
    assert len(second) == 1 and token == ""

    assert sorted(d["id"] for d in first + second) == ["node-1", "node-2", "node-3"]


def test_list_devices_without_field_mask_returns_ids_not_credentials(iot, registry):
    created = iot.create_device(registry, es256_device("thermo-1"))

    (device,), token = iot.list_devices_page(registry)

    assert token == ""
    assert (device["id"], device["numId"]) == ("thermo-1", created["numId"])
    assert "credentials" not in device  # Perch choice, SPEC §2.3: id, name, numId


def test_list_devices_with_bad_page_token_is_invalid_argument(iot, registry):
    iot.create_device(registry, es256_device("thermo-1"))

    with iot.expect_error("INVALID_ARGUMENT") as err:
        iot.list_devices_page(registry, page_size=2, page_token="not-a-real-token")

    assert "token" in err.message.lower()
    assert device_ids(iot, registry) == ["thermo-1"]


# ------------------------------------------------------------------------------------------------------------
# devices: validation


def test_create_device_twice_is_already_exists_and_keeps_the_first(iot, registry):
    first = iot.create_device(registry, es256_device("thermo-1"))

    with iot.expect_error("ALREADY_EXISTS") as err:
        iot.create_device(registry, es256_device("thermo-1"))

    assert "thermo-1" in err.message
    again = iot.get_device(f"{registry}/devices/thermo-1")
    assert again["numId"] == first["numId"]
    assert public_keys(again) == public_keys(first)
    assert device_ids(iot, registry) == ["thermo-1"]


def test_get_missing_device_is_not_found(iot, registry):
    iot.create_device(registry, es256_device("thermo-1"))

    with iot.expect_error("NOT_FOUND") as err:
        iot.get_device(f"{registry}/devices/ghost-1")
    assert "ghost-1" in err.message

    with iot.expect_error("NOT_FOUND") as err:
        iot.get_device(f"{registry}/devices/1234567890123")
    assert "1234567890123" in err.message


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_create_device_with_invalid_id_is_invalid_argument(iot, registry, bad_id):
    with iot.expect_error("INVALID_ARGUMENT") as err:
        iot.create_device(registry, es256_device(bad_id))

    assert bad_id in err.message
    assert device_ids(iot, registry) == []


@pytest.mark.parametrize("edge_id", EDGE_IDS)
def test_create_device_with_id_at_the_edge_of_the_rules_works(iot, registry, edge_id):
    created = iot.create_device(registry, es256_device(edge_id))

    assert created["id"] == edge_id
    assert iot.get_device(created["name"])["id"] == edge_id
    # REST clients send "%h" as "%25h" and "+" as is: the server percent-decodes the path, never "+" -> " ".
    # (An id with "%" + two hex digits cannot be addressed by string id over REST: both clients send it raw.)
    assert iot.get_device(f"{registry}/devices/{edge_id}")["numId"] == created["numId"]


def test_create_device_with_malformed_public_key_is_invalid_argument(iot, registry):
    garbage = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PUBLIC KEY-----\n"

    with iot.expect_error("INVALID_ARGUMENT") as err:
        iot.create_device(registry, {"id": "thermo-1",
                                     "credentials": [{"publicKey": {"format": "ES256_PEM", "key": garbage}}]})

    assert "key" in err.message.lower()
    assert device_ids(iot, registry) == []


def test_create_device_with_rsa_key_declared_es256_is_invalid_argument(iot, registry):
    with iot.expect_error("INVALID_ARGUMENT"):
        iot.create_device(registry, {"id": "thermo-1",
                                     "credentials": [{"publicKey": {"format": "ES256_PEM",
                                                                    "key": rsa_public_pem()}}]})

    assert device_ids(iot, registry) == []


def test_fourth_credential_is_invalid_argument_on_create_and_on_patch(iot, registry):
    with iot.expect_error("INVALID_ARGUMENT") as err:
        iot.create_device(registry, {"id": "thermo-1", "credentials": [es256_credential() for _ in range(4)]})
    assert "credential" in err.message.lower()
    assert device_ids(iot, registry) == []

    three = iot.create_device(registry, {"id": "thermo-1", "credentials": [es256_credential() for _ in range(3)]})
    assert len(public_keys(three)) == 3

    full = iot.get_device(three["name"])
    full["credentials"].append(es256_credential())
    with iot.expect_error("INVALID_ARGUMENT"):
        iot.update_device(full, ["credentials"])
    assert public_keys(iot.get_device(three["name"])) == public_keys(three)


# ------------------------------------------------------------------------------------------------------------
# devices: patch


def test_patch_blocked_with_update_mask_ignores_fields_outside_the_mask(iot, registry):
    created = iot.create_device(registry, es256_device("thermo-1", metadata={"room": "attic"}))
    # Like the GAPIC samples: fetch the whole device, change it, send all of it back with a narrow mask.
    sent = copy.deepcopy(iot.get_device(created["name"]))
    sent["blocked"] = True
    sent["metadata"] = {"room": "cellar"}
    sent["credentials"] = [es256_credential()]

    patched = iot.update_device(sent, ["blocked"])

    for device in (patched, iot.get_device(f"{registry}/devices/thermo-1")):
        assert device["blocked"] is True
        assert device["metadata"] == {"room": "attic"}
        assert public_keys(device) == public_keys(created)
        assert (device["numId"], device["config"]["version"]) == (created["numId"], "1")


def test_patch_blocked_false_unblocks_even_though_false_is_not_on_the_wire(iot, registry):
    created = iot.create_device(registry, es256_device("thermo-1", blocked=True))
    assert created["blocked"] is True

    # proto3 JSON omits `blocked: false`, so the mask alone says "set it to the default".
    patched = iot.update_device({"name": created["name"], "blocked": False}, ["blocked"])

    assert patched.get("blocked", False) is False
    assert iot.get_device(created["name"]).get("blocked", False) is False


def test_patch_without_update_mask_is_invalid_argument(iot, registry):
    created = iot.create_device(registry, es256_device("thermo-1"))

    with iot.expect_error("INVALID_ARGUMENT") as err:
        iot.update_device({"name": created["name"], "blocked": True}, None)

    assert "mask" in err.message.lower()
    assert iot.get_device(created["name"]).get("blocked", False) is False


def test_patch_output_only_field_is_invalid_argument(iot, registry):
    created = iot.create_device(registry, es256_device("thermo-1"))

    with iot.expect_error("INVALID_ARGUMENT") as err:
        iot.update_device({"name": created["name"], "numId": "42"}, ["num_id"])

    assert "num_id" in err.message or "numId" in err.message
    assert iot.get_device(created["name"])["numId"] == created["numId"]


# ------------------------------------------------------------------------------------------------------------
# devices: cloud-to-device config


def test_modify_config_twice_then_versions_list_newest_first(iot, registry):
    name = iot.create_device(registry, es256_device("thermo-1"))["name"]

    started = time.monotonic()
    v2 = iot.modify_config(name, CONFIG_V2, version_to_update=0)
    assert (v2["version"], unb64(v2["binaryData"])) == ("2", CONFIG_V2)
    assert "cloudUpdateTime" in v2

    wait_out_config_rate_limit(started)
    started = time.monotonic()
    v3 = iot.modify_config(name, CONFIG_V3, version_to_update=2)
    assert (v3["version"], unb64(v3["binaryData"])) == ("3", CONFIG_V3)

    assert config_versions(iot, name) == [("3", CONFIG_V3), ("2", CONFIG_V2), ("1", b"")]
    assert [c["version"] for c in iot.list_config_versions(name, num_versions=2)] == ["3", "2"]
    config = iot.get_device(name)["config"]
    assert (config["version"], unb64(config["binaryData"])) == ("3", CONFIG_V3)

    wait_out_config_rate_limit(started)
    with iot.expect_error("FAILED_PRECONDITION"):  # stale versionToUpdate; Perch choice, SPEC §2.3
        iot.modify_config(name, b"stale", version_to_update=2)
    assert config_versions(iot, name)[0] == ("3", CONFIG_V3)


def test_modify_config_accepts_snake_case_body_from_discovery_client(live_dev_server, project):
    """python-docs-samples' end-to-end server sends {"version_to_update": 0, "binary_data": "<b64>"} verbatim."""
    admin = DiscoveryAdmin("discovery-static", live_dev_server.admin_url, AnonymousCredentials())
    try:
        admin.create_registry(location_path(project), seed_registry(project))
        name = admin.create_device(registry_path(project), es256_device("thermo-1"))["name"]

        config = admin.modify_config_raw_body(name, {"version_to_update": 0,
                                                     "binary_data": "eyJmYW5fb24iOiB0cnVlfQ=="})

        assert (config["version"], unb64(config["binaryData"])) == ("2", b'{"fan_on": true}')
    finally:
        admin.close()


# ------------------------------------------------------------------------------------------------------------
# devices: delete


def test_deleted_device_is_gone_by_id_num_id_and_list(iot, registry):
    keep = iot.create_device(registry, es256_device("thermo-1"))
    gone = iot.create_device(registry, es256_device("thermo-2"))

    iot.delete_device(gone["name"])

    for name in (f"{registry}/devices/thermo-2", gone["name"]):
        with iot.expect_error("NOT_FOUND"):
            iot.get_device(name)
    with iot.expect_error("NOT_FOUND"):
        iot.delete_device(gone["name"])
    assert device_ids(iot, registry) == ["thermo-1"]
    assert iot.get_device(keep["name"])["id"] == "thermo-1"


# ------------------------------------------------------------------------------------------------------------
# discovery document


@pytest.mark.parametrize("path", ["/$discovery/rest?version=v1", "/discovery/v1/apis/cloudiot/v1/rest"])
@pytest.mark.parametrize("mode", ["dev", "token"])
def test_discovery_document_is_served_without_a_token_and_points_at_perch(request, mode, path):
    # googleapiclient.discovery.build() fetches the document with a bare httplib2.Http (no credentials),
    # so it must be readable without the admin token.
    server = request.getfixturevalue("live_dev_server" if mode == "dev" else "live_token_server")

    response = requests.get(server.admin_url + path, timeout=10)

    assert response.status_code == 200, response.text[:300]
    document = response.json()
    assert (document["name"], document["version"]) == ("cloudiot", "v1")
    assert document["rootUrl"] == server.admin_url + "/"
    assert document["baseUrl"] == server.admin_url + "/" + document.get("servicePath", "")
    devices = document["resources"]["projects"]["resources"]["locations"]["resources"]["registries"]["resources"][
        "devices"]
    assert devices["methods"]["modifyCloudToDeviceConfig"]["path"] == "v1/{+name}:modifyCloudToDeviceConfig"


# ------------------------------------------------------------------------------------------------------------
# admin token (server started without --dev)


def test_admin_token_file_is_private_and_non_empty(live_token_server):
    path = live_token_server.data_dir / "admin-token"

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert live_token_server.token


@pytest.mark.parametrize("authorization", [None, "Bearer not-the-token", "Basic Zm9vOmJhcg=="],
                         ids=["missing", "wrong-token", "wrong-scheme"])
def test_rest_without_the_admin_token_is_401_and_changes_nothing(live_token_server, admin_factory, project,
                                                                  authorization):
    headers = {} if authorization is None else {"Authorization": authorization}

    response = requests.post(f"{live_token_server.admin_url}/v1/{location_path(project)}/registries",
                             json=seed_registry(project), headers=headers, timeout=10)

    assert response.status_code == 401, response.text[:300]
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")
    admin = admin_factory("gapic-rest", live_token_server.endpoints, token=live_token_server.token)
    with admin.expect_error("NOT_FOUND"):
        admin.get_registry(registry_path(project))


@pytest.mark.parametrize("token", [None, "not-the-token"], ids=["missing", "wrong-token"])
def test_grpc_without_the_admin_token_is_unauthenticated(live_token_server, admin_factory, project, token):
    admin = admin_factory("gapic-grpc", live_token_server.endpoints, token=token)

    with admin.expect_error("UNAUTHENTICATED"):
        admin.create_registry(location_path(project), seed_registry(project))
    with admin.expect_error("UNAUTHENTICATED"):
        admin.list_registries(location_path(project))

    good = admin_factory("gapic-grpc", live_token_server.endpoints, token=live_token_server.token)
    assert good.list_registries(location_path(project)) == []


@pytest.mark.parametrize("token, raised", [
    pytest.param("not-the-token", google.auth.exceptions.RefreshError, id="wrong-token"),
    pytest.param(None, google.auth.exceptions.InvalidOperation, id="anonymous"),
])
@pytest.mark.parametrize("flavour", ["discovery-static", "discovery-url", "gapic-rest"])
def test_rest_clients_without_the_admin_token_fail_trying_to_refresh(live_token_server, admin_factory, project,
                                                                      flavour, token, raised):
    # google-auth refreshes credentials only on HTTP 401; a static token or anonymous credentials cannot be
    # refreshed, so the client raises RefreshError / InvalidOperation instead of an HTTP error.
    admin = admin_factory(flavour, live_token_server.endpoints, token=token)

    with pytest.raises(raised):
        admin.create_registry(location_path(project), seed_registry(project))

    good = admin_factory("gapic-rest", live_token_server.endpoints, token=live_token_server.token)
    assert good.list_registries(location_path(project)) == []


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_client_works_with_the_admin_token(live_token_server, admin_factory, project, flavour):
    admin = admin_factory(flavour, live_token_server.endpoints, token=live_token_server.token)

    created = admin.create_registry(location_path(project), seed_registry(project))
    device = admin.create_device(registry_path(project), es256_device("thermo-1"))

    assert admin.get_registry(registry_path(project)) == created
    assert admin.get_device(device["name"])["id"] == "thermo-1"
    admin.delete_device(device["name"])
    admin.delete_registry(registry_path(project))
    assert admin.list_registries(location_path(project)) == []


# ------------------------------------------------------------------------------------------------------------
# restarts and the serve contract


def test_restart_on_the_same_data_dir_keeps_registry_device_and_configs(server_factory, admin_factory, project):
    server = server_factory(dev=True)
    admin = admin_factory("gapic-rest", server.endpoints)
    registry = admin.create_registry(location_path(project), seed_registry(project))
    device = admin.create_device(registry_path(project), es256_device("thermo-1", metadata={"room": "attic"}))
    admin.modify_config(device["name"], CONFIG_V2, version_to_update=0)
    before = admin.get_device(device["name"])

    server.restart()  # SIGTERM must exit 0; then a new process on the same data dir (new ports)

    for flavour in ("gapic-rest", "gapic-grpc", "discovery-static"):
        admin = admin_factory(flavour, server.endpoints)
        assert admin.get_registry(registry_path(project)) == registry
        after = admin.get_device(f"{registry_path(project)}/devices/thermo-1")
        assert (after["name"], after["numId"]) == (before["name"], before["numId"])
        assert public_keys(after) == public_keys(before)
        assert after["metadata"] == {"room": "attic"}
        assert config_versions(admin, after["name"]) == [("2", CONFIG_V2), ("1", b"")]
    newcomer = admin.create_device(registry_path(project), es256_device("thermo-2"))
    assert newcomer["numId"] != before["numId"]


def test_restart_keeps_the_admin_token(server_factory, admin_factory, project):
    server = server_factory(dev=False)
    token = server.token
    admin_factory("gapic-rest", server.endpoints, token=token).create_registry(
        location_path(project), seed_registry(project))

    server.restart()

    assert server.token == token
    admin = admin_factory("gapic-rest", server.endpoints, token=token)
    assert admin.get_registry(registry_path(project))["id"] == REGISTRY_ID


def test_second_server_on_a_locked_data_dir_exits_1_with_a_message(server_factory, admin_factory, project):
    first = server_factory(dev=True)
    endpoints_before = (first.data_dir / "endpoints.json").read_text()

    second = subprocess.run(PerchServer(first.binary, first.data_dir, first.log_path, dev=True).command(),
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)

    assert second.returncode == 1, second.stderr
    assert second.stderr.strip(), "expected one clear line on stderr"
    assert (first.data_dir / "endpoints.json").read_text() == endpoints_before
    admin = admin_factory("gapic-rest", first.endpoints)
    assert admin.list_registries(location_path(project)) == []  # the first server still serves


def test_busy_admin_port_exits_1_with_a_message(server_factory):
    server = server_factory(dev=True, start=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = server.command()
        cmd[cmd.index("--admin") + 1] = f"127.0.0.1:{port}"

        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)

    assert result.returncode == 1, result.stderr
    assert str(port) in result.stderr or "in use" in result.stderr.lower()
    assert not (server.data_dir / "endpoints.json").exists()
