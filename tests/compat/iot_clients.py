"""One small adapter per Google client flavour for the Cloud IoT Core admin API (cloudiot v1).

Every adapter offers the same methods, takes and returns resources as proto3-JSON dicts (lowerCamelCase keys,
int64 as strings, enums as names, bytes as base64) and turns server errors into `ServerError` through
`expect_error(...)`, so one test body can run against every flavour. The calls themselves are the ones a user of
each library would write:

- `discovery-static` google-api-python-client, static discovery document, `client_options={"api_endpoint": …}`
- `discovery-url`    google-api-python-client, discovery document fetched from Perch (`discoveryServiceUrl`)
- `gapic-rest`       google-cloud-iot `DeviceManagerClient(transport="rest", client_options={"api_endpoint": …})`
- `gapic-grpc`       google-cloud-iot over `DeviceManagerGrpcTransport(channel=grpc.insecure_channel(…))`

Wire notes (read from the installed libraries, see README.md): the GAPIC REST transport maps an HTTP error to an
exception class by HTTP status only (400 → BadRequest, 409 → Conflict), while gRPC maps the status code
(InvalidArgument, AlreadyExists, …); `expect_error` checks the class each transport really raises plus the
google.rpc.Status `status` name in the REST body.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
from typing import Iterator, Optional, Sequence

import grpc
import pytest
from google.api_core import exceptions as core_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import iot_v1
from google.cloud.iot_v1.services.device_manager.transports import DeviceManagerGrpcTransport
from google.oauth2.credentials import Credentials as TokenCredentials
from google.protobuf import field_mask_pb2
from googleapiclient import discovery
from googleapiclient.errors import HttpError

# Generous per-call deadline: a healthy local server answers in milliseconds, a wedged one must not hang CI.
REQUEST_TIMEOUT = 20.0

FLAVOURS = ("discovery-static", "discovery-url", "gapic-rest", "gapic-grpc")

# google.rpc.Code name -> (HTTP status, gRPC status), SPEC.md §8.
STATUS = {
    "INVALID_ARGUMENT": (400, grpc.StatusCode.INVALID_ARGUMENT),
    "FAILED_PRECONDITION": (400, grpc.StatusCode.FAILED_PRECONDITION),
    "OUT_OF_RANGE": (400, grpc.StatusCode.OUT_OF_RANGE),
    "UNAUTHENTICATED": (401, grpc.StatusCode.UNAUTHENTICATED),
    "PERMISSION_DENIED": (403, grpc.StatusCode.PERMISSION_DENIED),
    "NOT_FOUND": (404, grpc.StatusCode.NOT_FOUND),
    "ALREADY_EXISTS": (409, grpc.StatusCode.ALREADY_EXISTS),
    "ABORTED": (409, grpc.StatusCode.ABORTED),
    "RESOURCE_EXHAUSTED": (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
}


@dataclasses.dataclass
class ServerError:
    """What the server said, filled in by `expect_error` once the call has failed."""

    status: str = ""  # google.rpc.Code name, e.g. "NOT_FOUND"
    message: str = ""  # the server's own message (without the client's "GET http://…:" prefix)
    exception: Optional[BaseException] = None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Strict standard base64 (SPEC §2.1: output is standard alphabet, padded)."""
    return base64.b64decode(text, validate=True)


class IotAdmin:
    """Common interface. Names are full resource names; dicts are proto3 JSON."""

    flavour: str

    # registries
    def create_registry(self, parent: str, registry: dict) -> dict: raise NotImplementedError
    def get_registry(self, name: str) -> dict: raise NotImplementedError
    def list_registries(self, parent: str) -> list[dict]: raise NotImplementedError
    def delete_registry(self, name: str) -> None: raise NotImplementedError

    # devices
    def create_device(self, parent: str, device: dict) -> dict: raise NotImplementedError
    def get_device(self, name: str) -> dict: raise NotImplementedError
    def delete_device(self, name: str) -> None: raise NotImplementedError

    def list_devices_page(self, parent: str, *, page_size: int = 0, page_token: str = "",
                          field_mask: Sequence[str] = ()) -> tuple[list[dict], str]:
        """One ListDevices call; returns (devices, next_page_token)."""
        raise NotImplementedError

    def list_devices_pages(self, parent: str, *, page_size: int = 0,
                           field_mask: Sequence[str] = ()) -> list[list[dict]]:
        """All pages, following next_page_token the way the library does it (pager / list_next)."""
        raise NotImplementedError

    def update_device(self, device: dict, update_mask: Optional[Sequence[str]]) -> dict:
        raise NotImplementedError

    def modify_config(self, name: str, data: bytes, version_to_update: int) -> dict: raise NotImplementedError
    def list_config_versions(self, name: str, num_versions: int = 0) -> list[dict]: raise NotImplementedError

    def close(self) -> None:
        pass

    # errors
    @contextlib.contextmanager
    def expect_error(self, status: str) -> Iterator[ServerError]:
        """`with client.expect_error("NOT_FOUND") as err: …` — fails the test unless the call fails that way."""
        err = ServerError()
        try:
            yield err
        except Exception as exc:  # noqa: BLE001 - classified below, anything else re-raised
            err.exception = exc
            self._classify(exc, status, err)
            return
        pytest.fail(f"[{self.flavour}] expected {status}, but the call succeeded")

    def _classify(self, exc: BaseException, status: str, err: ServerError) -> None:
        raise NotImplementedError


def _rest_status_body(content: bytes, flavour: str, http_status: int) -> dict:
    """The google.rpc.Status JSON every REST error must carry (SPEC §8)."""
    try:
        body = json.loads(content)
    except ValueError:
        pytest.fail(f"[{flavour}] HTTP {http_status} error body is not JSON: {content[:300]!r}")
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), (
        f"[{flavour}] error body is not {{\"error\": {{…}}}}: {body!r}")
    error = body["error"]
    assert error.get("code") == http_status, f"[{flavour}] error.code {error.get('code')!r} != HTTP {http_status}"
    assert isinstance(error.get("message"), str) and error["message"], f"[{flavour}] empty error.message: {error!r}"
    return error


# --------------------------------------------------------------------------------------------------------------
# google-api-python-client (discovery)


class DiscoveryAdmin(IotAdmin):
    def __init__(self, flavour: str, admin_url: str, credentials) -> None:
        self.flavour = flavour
        if flavour == "discovery-static":
            # Static document shipped inside google-api-python-client; only the endpoint is redirected.
            self.service = discovery.build(
                "cloudiot", "v1",
                credentials=credentials,
                client_options={"api_endpoint": admin_url + "/"},
                static_discovery=True,
                cache_discovery=False,
            )
        elif flavour == "discovery-url":
            # Document fetched from Perch; its rootUrl must point back at Perch, so no client_options.
            self.service = discovery.build(
                "cloudiot", "v1",
                credentials=credentials,
                discoveryServiceUrl=admin_url + "/$discovery/rest?version=v1",
                static_discovery=False,
                cache_discovery=False,
            )
        else:
            raise ValueError(flavour)
        self._registries = self.service.projects().locations().registries()
        self._devices = self._registries.devices()

    def create_registry(self, parent, registry):
        return self._registries.create(parent=parent, body=registry).execute()

    def get_registry(self, name):
        return self._registries.get(name=name).execute()

    def list_registries(self, parent):
        out, request = [], self._registries.list(parent=parent)
        while request is not None:
            response = request.execute()
            out.extend(response.get("deviceRegistries", []))
            request = self._registries.list_next(request, response)
        return out

    def delete_registry(self, name):
        assert self._registries.delete(name=name).execute() == {}

    def create_device(self, parent, device):
        return self._devices.create(parent=parent, body=device).execute()

    def get_device(self, name):
        return self._devices.get(name=name).execute()

    def delete_device(self, name):
        assert self._devices.delete(name=name).execute() == {}

    def _list_request(self, parent, page_size, page_token, field_mask):
        kwargs = {"parent": parent}
        if page_size:
            kwargs["pageSize"] = page_size
        if page_token:
            kwargs["pageToken"] = page_token
        if field_mask:
            # The discovery client passes the string through; the docs show snake_case paths.
            kwargs["fieldMask"] = ",".join(field_mask)
        return self._devices.list(**kwargs)

    def list_devices_page(self, parent, *, page_size=0, page_token="", field_mask=()):
        response = self._list_request(parent, page_size, page_token, field_mask).execute()
        return response.get("devices", []), response.get("nextPageToken", "")

    def list_devices_pages(self, parent, *, page_size=0, field_mask=()):
        pages, request = [], self._list_request(parent, page_size, "", field_mask)
        while request is not None:
            response = request.execute()
            pages.append(response.get("devices", []))
            request = self._devices.list_next(request, response)
        return pages

    def update_device(self, device, update_mask):
        kwargs = {"name": device["name"], "body": device}
        if update_mask is not None:
            kwargs["updateMask"] = ",".join(update_mask)
        return self._devices.patch(**kwargs).execute()

    def modify_config(self, name, data, version_to_update):
        # Like the discovery-era samples: URL-safe base64, JSON number for the int64 version.
        body = {"versionToUpdate": version_to_update,
                "binaryData": base64.urlsafe_b64encode(data).decode("ascii")}
        return self._devices.modifyCloudToDeviceConfig(name=name, body=body).execute()

    def modify_config_raw_body(self, name, body: dict) -> dict:
        return self._devices.modifyCloudToDeviceConfig(name=name, body=body).execute()

    def list_config_versions(self, name, num_versions=0):
        kwargs = {"name": name}
        if num_versions:
            kwargs["numVersions"] = num_versions
        return self._devices.configVersions().list(**kwargs).execute().get("deviceConfigs", [])

    def close(self):
        self.service.close()

    def _classify(self, exc, status, err):
        if not isinstance(exc, HttpError):
            raise exc
        http_status = STATUS[status][0]
        assert exc.resp.status == http_status, (
            f"[{self.flavour}] expected HTTP {http_status} ({status}), got {exc.resp.status}: {exc.content[:300]!r}")
        error = _rest_status_body(exc.content, self.flavour, http_status)
        assert error.get("status") == status, f"[{self.flavour}] error.status {error.get('status')!r} != {status}"
        err.status, err.message = error["status"], error["message"]


# --------------------------------------------------------------------------------------------------------------
# google-cloud-iot (GAPIC), REST and gRPC


class _BearerToken(grpc.UnaryUnaryClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call — how a user adds a static token to an insecure channel."""

    def __init__(self, token: str) -> None:
        self._token = token

    def intercept_unary_unary(self, continuation, details, request):
        metadata = list(details.metadata or []) + [("authorization", f"Bearer {self._token}")]
        details = _CallDetails(details.method, details.timeout, metadata, details.credentials,
                               getattr(details, "wait_for_ready", None), getattr(details, "compression", None))
        return continuation(details, request)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


def _to_json(message) -> dict:
    """proto-plus message -> proto3 JSON dict (camelCase, enum names, int64 strings), defaults omitted."""
    return json.loads(type(message).to_json(message, use_integers_for_enums=False,
                                            including_default_value_fields=False))


def _mask(paths: Optional[Sequence[str]]):
    return None if paths is None else field_mask_pb2.FieldMask(paths=list(paths))


class GapicAdmin(IotAdmin):
    def __init__(self, flavour: str, *, admin_url: str = "", grpc_target: str = "",
                 credentials=None, token: Optional[str] = None) -> None:
        self.flavour = flavour
        if flavour == "gapic-rest":
            self.client = iot_v1.DeviceManagerClient(
                credentials=credentials,
                transport="rest",
                client_options={"api_endpoint": admin_url},
            )
        elif flavour == "gapic-grpc":
            self.channel = grpc.insecure_channel(grpc_target)
            channel = self.channel if token is None else grpc.intercept_channel(self.channel, _BearerToken(token))
            self.client = iot_v1.DeviceManagerClient(transport=DeviceManagerGrpcTransport(channel=channel))
        else:
            raise ValueError(flavour)

    def create_registry(self, parent, registry):
        msg = iot_v1.DeviceRegistry.from_json(json.dumps(registry))
        return _to_json(self.client.create_device_registry(parent=parent, device_registry=msg,
                                                           timeout=REQUEST_TIMEOUT))

    def get_registry(self, name):
        return _to_json(self.client.get_device_registry(name=name, timeout=REQUEST_TIMEOUT))

    def list_registries(self, parent):
        pager = self.client.list_device_registries(parent=parent, timeout=REQUEST_TIMEOUT)
        return [_to_json(r) for r in pager]

    def delete_registry(self, name):
        assert self.client.delete_device_registry(name=name, timeout=REQUEST_TIMEOUT) is None

    def create_device(self, parent, device):
        msg = iot_v1.Device.from_json(json.dumps(device))
        return _to_json(self.client.create_device(parent=parent, device=msg, timeout=REQUEST_TIMEOUT))

    def get_device(self, name):
        return _to_json(self.client.get_device(name=name, timeout=REQUEST_TIMEOUT))

    def delete_device(self, name):
        assert self.client.delete_device(name=name, timeout=REQUEST_TIMEOUT) is None

    def _list(self, parent, page_size, page_token, field_mask):
        request = iot_v1.ListDevicesRequest(parent=parent, page_size=page_size, page_token=page_token)
        if field_mask:
            request.field_mask = field_mask_pb2.FieldMask(paths=list(field_mask))
        return self.client.list_devices(request=request, timeout=REQUEST_TIMEOUT)

    def list_devices_page(self, parent, *, page_size=0, page_token="", field_mask=()):
        first = next(iter(self._list(parent, page_size, page_token, field_mask).pages))
        return [_to_json(d) for d in first.devices], first.next_page_token

    def list_devices_pages(self, parent, *, page_size=0, field_mask=()):
        pager = self._list(parent, page_size, "", field_mask)
        return [[_to_json(d) for d in page.devices] for page in pager.pages]

    def update_device(self, device, update_mask):
        msg = iot_v1.Device.from_json(json.dumps(device), ignore_unknown_fields=True)
        return _to_json(self.client.update_device(device=msg, update_mask=_mask(update_mask),
                                                  timeout=REQUEST_TIMEOUT))

    def modify_config(self, name, data, version_to_update):
        response = self.client.modify_cloud_to_device_config(
            request={"name": name, "binary_data": data, "version_to_update": version_to_update},
            timeout=REQUEST_TIMEOUT,
        )
        return _to_json(response)

    def list_config_versions(self, name, num_versions=0):
        response = self.client.list_device_config_versions(
            request={"name": name, "num_versions": num_versions}, timeout=REQUEST_TIMEOUT)
        return [_to_json(c) for c in response.device_configs]

    def close(self):
        self.client.transport.close()

    def _classify(self, exc, status, err):
        if not isinstance(exc, core_exceptions.GoogleAPICallError):
            raise exc
        http_status, grpc_code = STATUS[status]
        if self.flavour == "gapic-grpc":
            expected = core_exceptions.exception_class_for_grpc_status(grpc_code)
            assert type(exc) is expected, (
                f"[{self.flavour}] expected {expected.__name__}, got {type(exc).__name__}: {exc}")
            err.status, err.message = status, exc.message
        else:
            # google.api_core.exceptions.from_http_response picks the class from the HTTP status alone.
            expected = core_exceptions.exception_class_for_http_status(http_status)
            assert type(exc) is expected, (
                f"[{self.flavour}] expected {expected.__name__} (HTTP {http_status}), "
                f"got {type(exc).__name__}: {exc}")
            error = _rest_status_body(exc.response.content, self.flavour, http_status)
            assert error.get("status") == status, f"[{self.flavour}] error.status {error.get('status')!r} != {status}"
            err.status, err.message = error["status"], error["message"]


def make_admin(flavour: str, endpoints: dict, token: Optional[str] = None) -> IotAdmin:
    """A client of the given flavour for a running server; `token` None = anonymous (dev mode)."""
    admin_url = "http://" + endpoints["admin"]
    credentials = AnonymousCredentials() if token is None else TokenCredentials(token)
    if flavour.startswith("discovery-"):
        return DiscoveryAdmin(flavour, admin_url, credentials)
    if flavour == "gapic-rest":
        return GapicAdmin(flavour, admin_url=admin_url, credentials=credentials)
    if flavour == "gapic-grpc":
        return GapicAdmin(flavour, grpc_target=endpoints["grpc"], token=token)
    raise ValueError(flavour)
