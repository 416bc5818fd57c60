"""Helpers for the Pub/Sub compatibility tests: Google's Python clients pointed at Perch via PUBSUB_EMULATOR_HOST,
a polling pull, a StreamingPull collector and a local push endpoint.

Wire notes (read from google-cloud-pubsub 2.39.0 / google-api-core 2.30.3, see test_pubsub.py's docstring):
- With PUBSUB_EMULATOR_HOST set, PublisherClient / SubscriberClient build `grpc.insecure_channel(HOST)` **without
  channel options** and use AnonymousCredentials: no `authorization` metadata, and gRPC's default 4 MiB limit on
  *received* messages applies (sending is unlimited).
- `publisher.api` is the GAPIC client itself (`super()`), so `publisher.api.publish(request=…)` is one raw Publish
  RPC with no client-side batching; pass `retry=None` so a wrong status is not retried for 60 s.
- Pull's `return_immediately=True` makes the client emit a DeprecationWarning; the polling helpers use it anyway so
  that they never depend on the server's long-poll timing (tests of long-poll use `return_immediately=False`).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Optional, Sequence

from google.cloud import pubsub_v1

REQUEST_TIMEOUT = 20.0  # per unary RPC; a healthy local server answers in milliseconds
POLL = 0.05


def topic_path(project: str, topic: str) -> str:
    return f"projects/{project}/topics/{topic}"


def sub_path(project: str, sub: str) -> str:
    return f"projects/{project}/subscriptions/{sub}"


def snapshot_path(project: str, snap: str) -> str:
    return f"projects/{project}/snapshots/{snap}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = POLL) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------------------
# clients


class PubSub:
    """Google's Python Pub/Sub clients against one Perch server, the way an emulator user sets them up.

    `connect(server)` (re)points PUBSUB_EMULATOR_HOST at the server's gRPC address and makes fresh clients (the
    variable is read when a client is constructed, and a restarted server listens on a new port)."""

    def __init__(self, server, project: str, monkeypatch) -> None:
        self.project = project
        self._monkeypatch = monkeypatch
        self._publishers: list = []
        self._subscribers: list = []
        self._streams: list[StreamCollector] = []
        self.server = None
        self.connect(server)

    # --- lifecycle -----------------------------------------------------------------------------------------
    def connect(self, server) -> "PubSub":
        self.close()
        self.server = server
        self._monkeypatch.setenv("PUBSUB_EMULATOR_HOST", server.grpc_target)
        self.publisher = self.new_publisher()
        self.subscriber = self.new_subscriber()
        return self

    def new_publisher(self, **kwargs) -> pubsub_v1.PublisherClient:
        client = pubsub_v1.PublisherClient(**kwargs)
        self._publishers.append(client)
        return client

    def new_subscriber(self, **kwargs) -> pubsub_v1.SubscriberClient:
        client = pubsub_v1.SubscriberClient(**kwargs)
        self._subscribers.append(client)
        return client

    def close(self) -> None:
        for stream in self._streams:
            stream.stop(check=False)
        self._streams.clear()
        for client in self._subscribers:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - teardown must not mask the test's own failure
                pass
        for client in self._publishers:
            try:
                client.transport.close()
            except Exception:  # noqa: BLE001
                pass
        self._subscribers.clear()
        self._publishers.clear()

    @property
    def raw_publisher(self):
        """The GAPIC PublisherClient behind `publisher` (no batching): one call = one Publish RPC."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return self.publisher.api

    # --- names ---------------------------------------------------------------------------------------------
    def topic(self, topic_id: str) -> str:
        return topic_path(self.project, topic_id)

    def sub(self, sub_id: str) -> str:
        return sub_path(self.project, sub_id)

    def snapshot(self, snap_id: str) -> str:
        return snapshot_path(self.project, snap_id)

    # --- admin ---------------------------------------------------------------------------------------------
    def create_topic(self, topic_id: str, **fields) -> str:
        name = self.topic(topic_id)
        self.publisher.create_topic(request={"name": name, **fields}, timeout=REQUEST_TIMEOUT)
        return name

    def create_subscription(self, sub_id: str, topic: str, **fields) -> str:
        name = self.sub(sub_id)
        self.subscriber.create_subscription(request={"name": name, "topic": topic, **fields},
                                            timeout=REQUEST_TIMEOUT)
        return name

    # --- publish -------------------------------------------------------------------------------------------
    def publish(self, topic: str, messages: Iterable, publisher=None, timeout: float = 30.0) -> list[str]:
        """Publish (data, attributes[, ordering_key]) tuples with the batching client; wait for every future.

        Returns the message ids in publish order (each future resolves to the server's id string)."""
        publisher = publisher or self.publisher
        futures = []
        for item in messages:
            data, attrs = item[0], item[1]
            key = item[2] if len(item) > 2 else ""
            if key:
                futures.append(publisher.publish(topic, data, ordering_key=key, **attrs))
            else:
                futures.append(publisher.publish(topic, data, **attrs))
        return [f.result(timeout=timeout) for f in futures]

    def publish_raw(self, topic: str, messages: Sequence[dict], timeout: float = REQUEST_TIMEOUT):
        """One raw Publish RPC (GAPIC, no batching, no retry) -> PublishResponse."""
        return self.raw_publisher.publish(request={"topic": topic, "messages": list(messages)},
                                          retry=None, timeout=timeout)

    # --- unary pull ----------------------------------------------------------------------------------------
    def pull(self, sub: str, max_messages: int = 1000) -> list:
        """One Pull with return_immediately=True -> list of ReceivedMessage (proto-plus)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            response = self.subscriber.pull(
                request={"subscription": sub, "max_messages": max_messages, "return_immediately": True},
                timeout=REQUEST_TIMEOUT)
        return list(response.received_messages)

    def pull_until(self, sub: str, count: int, timeout: float = 15.0, what: str = "") -> list:
        """Pull repeatedly until at least `count` ReceivedMessages arrived (not acked); fail after `timeout`."""
        got: list = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            got.extend(self.pull(sub))
            if len(got) >= count:
                break
            if time.monotonic() >= deadline:
                ids = [r.message.message_id for r in got]
                raise AssertionError(f"{what or sub}: wanted {count} messages within {timeout}s, got {len(got)}: {ids}")
            time.sleep(POLL)
        return got

    def pull_quiet(self, sub: str, quiet: float = 1.0) -> list:
        """Pull for `quiet` seconds and return whatever arrived (callers usually assert it is empty)."""
        got: list = []
        deadline = time.monotonic() + quiet
        while True:
            got.extend(self.pull(sub))
            if time.monotonic() >= deadline:
                return got
            time.sleep(POLL * 2)

    def ack(self, sub: str, ack_ids: Sequence[str]) -> None:
        ack_ids = list(ack_ids)
        for i in range(0, len(ack_ids), 1000):
            self.subscriber.acknowledge(request={"subscription": sub, "ack_ids": ack_ids[i:i + 1000]},
                                        timeout=REQUEST_TIMEOUT)

    def modack(self, sub: str, ack_ids: Sequence[str], seconds: int) -> None:
        self.subscriber.modify_ack_deadline(
            request={"subscription": sub, "ack_ids": list(ack_ids), "ack_deadline_seconds": seconds},
            timeout=REQUEST_TIMEOUT)

    def drain(self, sub: str, count: int, timeout: float = 15.0) -> list:
        """pull_until + ack everything received."""
        got = self.pull_until(sub, count, timeout)
        self.ack(sub, [r.ack_id for r in got])
        return got

    # --- streaming pull ------------------------------------------------------------------------------------
    def stream(self, sub: str, decide: Optional[Callable[[Any], Optional[str]]] = None, **kwargs) -> "StreamCollector":
        collector = StreamCollector(self.subscriber, sub, decide, **kwargs)
        self._streams.append(collector)
        return collector


class StreamCollector:
    """`subscriber.subscribe()` (StreamingPull) with a callback that records every delivery.

    `decide(message)` returns "ack", "nack" or None (leave it to the lease manager); default "ack"."""

    def __init__(self, subscriber, sub: str, decide=None, flow_control=None) -> None:
        self.sub = sub
        self.decide = decide or (lambda message: "ack")
        self.deliveries: list = []  # google.cloud.pubsub_v1.subscriber.message.Message, in callback order
        self.errors: list = []
        self._cond = threading.Condition()
        kwargs = {"flow_control": flow_control} if flow_control is not None else {}
        self.future = subscriber.subscribe(sub, self._callback, **kwargs)

    def _callback(self, message) -> None:
        try:
            with self._cond:
                self.deliveries.append(message)
                action = self.decide(message)
            if action == "ack":
                message.ack()
            elif action == "nack":
                message.nack()
        except Exception as exc:  # noqa: BLE001 - surfaced by wait_for
            self.errors.append(exc)
        finally:
            with self._cond:
                self._cond.notify_all()

    def snapshot(self) -> list:
        with self._cond:
            return list(self.deliveries)

    def wait_for(self, predicate: Callable[[list], bool], timeout: float, what: str) -> list:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.errors:
                    raise AssertionError(f"callback failed: {self.errors[0]!r}")
                if predicate(self.deliveries):
                    return list(self.deliveries)
                if self.future.done():
                    raise AssertionError(f"streaming pull ended while waiting for {what}: "
                                         f"{self.future.exception()!r}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                         f"{len(self.deliveries)} deliveries so far")
                self._cond.wait(min(remaining, 0.2))

    def wait_ids(self, ids: Iterable[str], timeout: float, what: str = "messages") -> list:
        want = set(ids)
        return self.wait_for(lambda ds: want <= {m.message_id for m in ds}, timeout,
                             f"{what} ({len(want)} ids)")

    def stop(self, check: bool = True) -> None:
        """Cancel the stream and wait until the client has flushed its acks/nacks."""
        if self.future.done():
            if check and self.future.exception() is not None:
                raise AssertionError(f"streaming pull failed: {self.future.exception()!r}")
            return
        self.future.cancel()
        try:
            self.future.result(timeout=15)
        except Exception:  # noqa: BLE001 - cancellation itself is not the test's subject
            if check:
                raise


# ------------------------------------------------------------------------------------------------------------
# push endpoint


class PushRequest:
    def __init__(self, path: str, headers: dict, body: bytes, at: float) -> None:
        self.path = path
        self.headers = headers
        self.body = body
        self.at = at

    def json(self) -> dict:
        return json.loads(self.body)


class PushEndpoint:
    """An HTTP server on 127.0.0.1:0 that records POSTs; the n-th request is answered with statuses[n]
    (then `default`); 3xx answers carry `Location: redirect_to` when given."""

    def __init__(self, statuses: Sequence[int] = (), default: int = 204, redirect_to: str = "") -> None:
        self.requests: list[PushRequest] = []
        self.redirect_to = redirect_to
        self.statuses = list(statuses)
        self.default = default
        self._cond = threading.Condition()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with endpoint._cond:
                    index = len(endpoint.requests)
                    endpoint.requests.append(PushRequest(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                         body, time.monotonic()))
                    status = endpoint.statuses[index] if index < len(endpoint.statuses) else endpoint.default
                    endpoint._cond.notify_all()
                self.send_response(status)
                if 300 <= status < 400 and endpoint.redirect_to:
                    self.send_header("Location", endpoint.redirect_to)
                if status == 204:
                    self.end_headers()
                else:
                    payload = b"{}" if status < 300 else b"nope"
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="push-endpoint", daemon=True)
        self.thread.start()

    def url(self, path: str = "/push") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def wait_for(self, count: int, timeout: float, what: str = "push requests") -> list[PushRequest]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {count} {what}; "
                                         f"got {len(self.requests)}")
                self._cond.wait(min(remaining, 0.2))
            return list(self.requests)

    def snapshot(self) -> list[PushRequest]:
        with self._cond:
            return list(self.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
