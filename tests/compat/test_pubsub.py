"""Cloud Pub/Sub v1 against a real `perch serve`, with Google's own clients (SPEC.md §7, §9 items 14-18).

google-cloud-pubsub 2.39.0 talks to Perch exactly as to Google's emulator: `PUBSUB_EMULATOR_HOST=<grpc addr>`,
plain gRPC, no credentials (the server runs `--dev`). The emulator-style REST surface on the admin port is driven
with `requests`, push delivery with a local `http.server`.

What the Python client really does on the wire (read from the pinned library; the server must cope with it):
- `subscribe()` = StreamingPull. First request: subscription, stream_ack_deadline_seconds, client_id (uuid4),
  max_outstanding_messages 1000, max_outstanding_bytes 104857600, empty modify_deadline lists. Every later request
  on the stream is empty (a 30 s heartbeat) or only changes stream_ack_deadline_seconds. On every response it sends
  a unary ModifyAckDeadline for the received ack ids ("receipt modack"); ack() / nack() / lease extensions are
  batched unary Acknowledge / ModifyAckDeadline(0) RPCs, never stream requests. It reads
  `subscription_properties.exactly_once_delivery_enabled` from every response.
- The stream stops (future resolves with the error) on CANCELLED, INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED,
  UNAUTHENTICATED and on any other non-retryable code (e.g. FAILED_PRECONDITION); it silently reopens on ABORTED,
  DEADLINE_EXCEEDED, INTERNAL, RESOURCE_EXHAUSTED, UNAVAILABLE, UNKNOWN.
- In emulator mode the channel has gRPC's default 4 MiB receive limit, so a StreamingPull response bigger than
  4 MiB is RESOURCE_EXHAUSTED on the client and the stream reopens forever: the server must split batches.
- `Message.delivery_attempt` is None unless the server sends delivery_attempt > 0 (only with a dead-letter policy).

Timing: every wait is a poll with a deadline. The one unavoidable wait is an ack deadline (10 s, the minimum),
done once in test_ack_deadline_expiry_redelivers_and_modack_extends_or_nacks.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import socket
import threading
import time
import uuid

import pytest
import requests
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from pubsub_helpers import REQUEST_TIMEOUT, PubSub, PushEndpoint, b64, sub_path, topic_path, wait_until

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
DEAD_LETTER_ATTRIBUTES = ("CloudPubSubDeadLetterSourceDeliveryCount", "CloudPubSubDeadLetterSourceSubscription",
                          "CloudPubSubDeadLetterSourceSubscriptionProject",
                          "CloudPubSubDeadLetterSourceTopicPublishTime")
MiB = 1024 * 1024


@pytest.fixture
def ps(live_dev_server, project, monkeypatch):
    """Google's publisher + subscriber clients on the shared dev server, isolated by the test's own project id."""
    client = PubSub(live_dev_server, project, monkeypatch)
    yield client
    client.close()


@pytest.fixture
def push_endpoint():
    endpoints: list[PushEndpoint] = []

    def make(statuses=(), default=204, redirect_to="") -> PushEndpoint:
        endpoint = PushEndpoint(statuses, default, redirect_to)
        endpoints.append(endpoint)
        return endpoint

    yield make
    for endpoint in endpoints:
        endpoint.close()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def by_data(received) -> dict:
    return {r.message.data: r for r in received}


def parse_rfc3339(text: str) -> dt.datetime:
    assert RFC3339_UTC.match(text), f"not an RFC 3339 UTC timestamp: {text!r}"
    head, _, frac = text[:-1].partition(".")
    stamp = dt.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc)
    return stamp + dt.timedelta(microseconds=int((frac + "000000")[:6])) if frac else stamp


def ts(timestamp) -> dt.datetime:
    """proto-plus gives Timestamp fields as DatetimeWithNanoseconds; normalise to an aware datetime."""
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=dt.timezone.utc)
    return timestamp


# ------------------------------------------------------------------------------------------------------------
# 1. topics and subscriptions: create / get / list / delete


def test_topic_and_subscription_lifecycle_with_already_exists_and_not_found(ps):
    topics = [ps.create_topic(f"sensordata-{i}") for i in range(3)]
    topic = topics[0]

    assert ps.publisher.get_topic(request={"topic": topic}, timeout=REQUEST_TIMEOUT).name == topic
    with pytest.raises(gexc.AlreadyExists):
        ps.create_topic("sensordata-0")
    # page_size=2 over 3 topics: the pager must follow next_page_token to see all of them
    listed = ps.publisher.list_topics(request={"project": f"projects/{ps.project}", "page_size": 2},
                                      timeout=REQUEST_TIMEOUT)
    assert sorted(t.name for t in listed) == sorted(topics)

    sub = ps.create_subscription("sensordata-sub", topic)
    got = ps.subscriber.get_subscription(request={"subscription": sub}, timeout=REQUEST_TIMEOUT)
    assert got.name == sub and got.topic == topic
    assert got.ack_deadline_seconds == 10  # SPEC §7.2: 0 (unset) means 10, echoed
    with pytest.raises(gexc.AlreadyExists):
        ps.create_subscription("sensordata-sub", topic)
    with pytest.raises(gexc.NotFound):
        ps.create_subscription("orphan-sub", ps.topic("no-such-topic"))
    subs = ps.subscriber.list_subscriptions(request={"project": f"projects/{ps.project}"}, timeout=REQUEST_TIMEOUT)
    assert [s.name for s in subs] == [sub]
    topic_subs = ps.publisher.list_topic_subscriptions(request={"topic": topic}, timeout=REQUEST_TIMEOUT)
    assert list(topic_subs) == [sub]

    # Deleting a topic keeps its subscriptions, whose topic becomes "_deleted-topic_" (SPEC §7.1).
    ps.publisher.delete_topic(request={"topic": topic}, timeout=REQUEST_TIMEOUT)
    with pytest.raises(gexc.NotFound):
        ps.publisher.get_topic(request={"topic": topic}, timeout=REQUEST_TIMEOUT)
    with pytest.raises(gexc.NotFound):
        ps.publisher.delete_topic(request={"topic": topic}, timeout=REQUEST_TIMEOUT)
    with pytest.raises(gexc.NotFound):
        ps.publisher.publish(topic, b"x").result(timeout=30)
    orphan = ps.subscriber.get_subscription(request={"subscription": sub}, timeout=REQUEST_TIMEOUT)
    assert orphan.topic == "_deleted-topic_"
    assert sorted(t.name for t in ps.publisher.list_topics(request={"project": f"projects/{ps.project}"},
                                                           timeout=REQUEST_TIMEOUT)) == sorted(topics[1:])

    ps.subscriber.delete_subscription(request={"subscription": sub}, timeout=REQUEST_TIMEOUT)
    with pytest.raises(gexc.NotFound):
        ps.subscriber.get_subscription(request={"subscription": sub}, timeout=REQUEST_TIMEOUT)
    with pytest.raises(gexc.NotFound):
        ps.subscriber.delete_subscription(request={"subscription": sub}, timeout=REQUEST_TIMEOUT)
    assert list(ps.subscriber.list_subscriptions(request={"project": f"projects/{ps.project}"},
                                                 timeout=REQUEST_TIMEOUT)) == []


# ------------------------------------------------------------------------------------------------------------
# 2. publish and receive


def test_publish_1000_and_receive_all_with_streaming_pull(ps):
    topic = ps.create_topic("sensordata")
    sub = ps.create_subscription("sensordata-sub", topic)
    sent = {f"reading-{i}".encode() + bytes([i % 256]): {"seq": str(i), "deviceId": f"dev-{i % 7}"}
            for i in range(1000)}

    before = now_utc()
    ids = ps.publish(topic, sent.items())
    after = now_utc()

    assert all(isinstance(i, str) and i for i in ids)
    assert len(set(ids)) == 1000, "message ids must be unique within a topic"
    stream = ps.stream(sub)  # acks every message in the callback
    deliveries = stream.wait_ids(ids, timeout=30, what="all 1000 messages")
    stream.stop()

    id_of = dict(zip(sent, ids))
    assert len(deliveries) == 1000, f"{len(deliveries) - 1000} duplicate deliveries within one lease"
    for message in deliveries:
        assert message.data in sent
        assert dict(message.attributes) == sent[message.data]
        assert message.message_id == id_of[message.data]
        assert before - dt.timedelta(seconds=1) <= message.publish_time <= after + dt.timedelta(seconds=1)
        assert message.delivery_attempt is None  # no dead-letter policy: server sends 0 (SPEC §7.5)


def test_publish_and_unary_pull_with_max_messages_then_acknowledge(ps):
    topic = ps.create_topic("sensordata")
    sub = ps.create_subscription("sensordata-sub", topic)
    payloads = [(f"m{i}".encode() + b"\x00\xff", {"i": str(i)}) for i in range(25)]
    payloads.append((b"", {"only": "attributes"}))  # a message needs data OR attributes
    before = now_utc()
    ids = ps.publish(topic, payloads)
    after = now_utc()

    first = ps.pull(sub, max_messages=5)
    assert 1 <= len(first) <= 5, "Pull must honour max_messages"
    rest = ps.pull_until(sub, len(payloads) - len(first))
    received = first + rest
    assert sorted(r.message.message_id for r in received) == sorted(ids)
    for r in received:
        assert r.ack_id and isinstance(r.ack_id, str)
        assert r.delivery_attempt == 0
        data, attrs = payloads[ids.index(r.message.message_id)]
        assert r.message.data == data
        assert dict(r.message.attributes) == attrs
        assert before - dt.timedelta(seconds=1) <= ts(r.message.publish_time) <= after + dt.timedelta(seconds=1)
    assert len({r.ack_id for r in received}) == len(received), "ack ids must be distinct"

    ps.ack(sub, [r.ack_id for r in received])
    ps.ack(sub, [r.ack_id for r in received[:3]])  # acking twice is not an error (SPEC §7.5)
    assert ps.pull(sub) == []


def test_empty_pull_returns_before_the_client_deadline_and_long_poll_wakes_on_publish(ps):
    topic = ps.create_topic("sensordata")
    sub = ps.create_subscription("sensordata-sub", topic)

    # Pull without return_immediately on an empty subscription: SPEC §7.5 says answer (empty) before the
    # client's grpc-timeout rather than let the call die with DEADLINE_EXCEEDED.
    start = time.monotonic()
    response = ps.subscriber.pull(request={"subscription": sub, "max_messages": 10}, timeout=5, retry=None)
    assert list(response.received_messages) == []
    assert time.monotonic() - start < 5

    # A waiting Pull returns as soon as a message is published.
    result: dict = {}

    def waiting_pull():
        try:
            result["response"] = ps.subscriber.pull(request={"subscription": sub, "max_messages": 10},
                                                    timeout=15, retry=None)
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc
        result["at"] = time.monotonic()

    thread = threading.Thread(target=waiting_pull)
    thread.start()
    time.sleep(0.3)  # let the Pull reach the server and start waiting
    published_at = time.monotonic()
    [msg_id] = ps.publish(topic, [(b"wake up", {})])
    thread.join(20)
    assert "error" not in result, result.get("error")
    assert [r.message.message_id for r in result["response"].received_messages] == [msg_id]
    assert result["at"] - published_at < 5


# ------------------------------------------------------------------------------------------------------------
# 3. nack, ack deadline expiry, modack


def test_nack_redelivers_with_streaming_pull(ps):
    topic = ps.create_topic("sensordata")
    sub = ps.create_subscription("sensordata-sub", topic)
    ids = ps.publish(topic, [(f"n{i}".encode(), {"i": str(i)}) for i in range(3)])
    seen: dict = {}

    def nack_first_time(message):
        seen[message.message_id] = seen.get(message.message_id, 0) + 1
        return "nack" if seen[message.message_id] == 1 else "ack"

    stream = ps.stream(sub, nack_first_time)
    stream.wait_for(lambda ds: all(seen.get(i, 0) >= 2 for i in ids), timeout=20,
                    what="every message delivered a second time after its nack")
    stream.stop()

    deliveries = stream.snapshot()
    for i in ids:
        mine = [m for m in deliveries if m.message_id == i]
        assert len({m.data for m in mine}) == 1 and len({tuple(sorted(m.attributes.items())) for m in mine}) == 1
        assert all(m.delivery_attempt is None for m in mine)  # no dead-letter policy
    assert ps.pull_quiet(sub, 0.5) == []


def test_ack_deadline_expiry_redelivers_and_modack_extends_or_nacks(ps):
    """One 10 s wait covers: expiry redelivery with and without a dead-letter policy (delivery_attempt 1 -> 2,
    resp. 0), and a ModifyAckDeadline extension that keeps a third subscription's message from being redelivered;
    then ModifyAckDeadline(0) nacks it at once."""
    topic = ps.create_topic("sensordata")
    dlq = ps.create_topic("sensordata-dlq")
    with_dlq = ps.create_subscription("with-dlq", topic, ack_deadline_seconds=10,
                                      dead_letter_policy={"dead_letter_topic": dlq, "max_delivery_attempts": 5})
    plain = ps.create_subscription("plain", topic, ack_deadline_seconds=10)
    extended = ps.create_subscription("extended", topic, ack_deadline_seconds=10)
    [msg_id] = ps.publish(topic, [(b"slow consumer", {"k": "v"})])

    pulled_at = time.monotonic()
    [first_dl] = ps.pull_until(with_dlq, 1)
    [first_plain] = ps.pull_until(plain, 1)
    [first_ext] = ps.pull_until(extended, 1)
    ext_pulled = time.monotonic()
    ps.modack(extended, [first_ext.ack_id], 60)
    assert first_dl.delivery_attempt == 1
    assert first_plain.delivery_attempt == 0

    # Nothing comes back while the deadline runs.
    assert ps.pull(with_dlq) == [] and ps.pull(plain) == []

    [again_dl] = ps.pull_until(with_dlq, 1, timeout=25, what="redelivery after the 10 s ack deadline")
    redelivered_after = time.monotonic() - pulled_at
    [again_plain] = ps.pull_until(plain, 1, timeout=10, what="redelivery after the 10 s ack deadline")
    assert redelivered_after >= 9.5, f"redelivered {redelivered_after:.1f}s after the pull, before the deadline"
    assert again_dl.message.message_id == msg_id and again_plain.message.message_id == msg_id
    assert again_dl.message.data == b"slow consumer" and dict(again_dl.message.attributes) == {"k": "v"}
    assert again_dl.delivery_attempt == 2
    assert again_plain.delivery_attempt == 0
    assert again_dl.ack_id != first_dl.ack_id  # each delivery gets a fresh ack id

    # The extended lease (60 s) still holds after the subscription's 10 s deadline.
    time.sleep(max(0.0, ext_pulled + 10.5 - time.monotonic()))
    assert ps.pull_quiet(extended, 1.0) == [], "ModifyAckDeadline(60) did not extend the lease"
    ps.modack(extended, [first_ext.ack_id], 0)  # ModifyAckDeadline 0 = nack: redeliverable at once
    [again_ext] = ps.pull_until(extended, 1, timeout=5, what="redelivery after ModifyAckDeadline(0)")
    assert again_ext.message.message_id == msg_id

    ps.ack(with_dlq, [again_dl.ack_id])
    ps.ack(plain, [again_plain.ack_id])
    ps.ack(extended, [again_ext.ack_id])
    ps.ack(plain, [first_plain.ack_id])  # an expired ack id is not an error (SPEC §7.5)


def test_retry_policy_spaces_redelivery_after_nack(ps):
    topic = ps.create_topic("sensordata")
    sub = ps.create_subscription("sensordata-sub", topic,
                                 retry_policy={"minimum_backoff": {"seconds": 2}, "maximum_backoff": {"seconds": 3}})
    ps.publish(topic, [(b"backoff", {})])
    started = time.monotonic()
    [first] = ps.pull_until(sub, 1)
    ps.modack(sub, [first.ack_id], 0)

    [again] = ps.pull_until(sub, 1, timeout=15, what="redelivery after the minimum backoff")
    waited = time.monotonic() - started
    assert again.message.message_id == first.message.message_id
    assert waited >= 1.8, f"redelivered after {waited:.2f}s, minimum_backoff is 2s"
    ps.ack(sub, [again.ack_id])


# ------------------------------------------------------------------------------------------------------------
# 4. dead letter


def test_dead_letter_after_five_nacks_forwards_with_source_attributes(ps):
    topic = ps.create_topic("sensordata")
    dlq = ps.create_topic("sensordata-dlq")
    dlq_sub = ps.create_subscription("sensordata-dlq-sub", dlq)
    sub = ps.create_subscription("sensordata-sub", topic,
                                 dead_letter_policy={"dead_letter_topic": dlq, "max_delivery_attempts": 5})
    got = ps.subscriber.get_subscription(request={"subscription": sub}, timeout=REQUEST_TIMEOUT)
    assert got.dead_letter_policy.dead_letter_topic == dlq
    assert got.dead_letter_policy.max_delivery_attempts == 5
    [msg_id] = ps.publish(topic, [(b"poison \x00\xff", {"deviceId": "thermo-1"})])

    stream = ps.stream(sub, lambda message: "nack")
    [dead] = ps.pull_until(dlq_sub, 1, timeout=30, what="the message on the dead-letter subscription")
    stream.stop()

    attempts = [m.delivery_attempt for m in stream.snapshot() if m.message_id == msg_id]
    assert attempts == [1, 2, 3, 4, 5]
    message = dead.message
    assert message.data == b"poison \x00\xff"
    attrs = dict(message.attributes)
    assert attrs["deviceId"] == "thermo-1", "the original attributes are kept"
    assert set(DEAD_LETTER_ATTRIBUTES) <= set(attrs), f"missing dead-letter attributes: {attrs}"
    assert attrs["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert attrs["CloudPubSubDeadLetterSourceSubscription"] == "sensordata-sub"
    assert attrs["CloudPubSubDeadLetterSourceSubscriptionProject"] == ps.project
    assert attrs["CloudPubSubDeadLetterSourceTopicPublishTime"]
    ps.ack(dlq_sub, [dead.ack_id])
    # Forwarded = acked on the source: not delivered there again.
    assert ps.pull_quiet(sub, 0.5) == []


def test_dead_letter_policy_validation(ps):
    topic = ps.create_topic("sensordata")
    dlq = ps.create_topic("sensordata-dlq")
    for attempts in (4, 101):
        with pytest.raises(gexc.InvalidArgument):
            ps.create_subscription(uid("bad-dlq"), topic,
                                   dead_letter_policy={"dead_letter_topic": dlq, "max_delivery_attempts": attempts})
    # 0 means the default, 5 (SPEC §7.2)
    sub = ps.create_subscription("default-attempts", topic, dead_letter_policy={"dead_letter_topic": dlq})
    got = ps.subscriber.get_subscription(request={"subscription": sub}, timeout=REQUEST_TIMEOUT)
    assert got.dead_letter_policy.max_delivery_attempts == 5
    with pytest.raises((gexc.NotFound, gexc.InvalidArgument)):
        ps.create_subscription(uid("missing-dlq"), topic,
                               dead_letter_policy={"dead_letter_topic": ps.topic("no-such-dlq"),
                                                   "max_delivery_attempts": 5})


# ------------------------------------------------------------------------------------------------------------
# 5. ordering keys


def test_ordering_keys_are_delivered_in_publish_order_per_key(ps):
    topic = ps.create_topic("sensordata")
    sub = ps.create_subscription("sensordata-sub", topic, enable_message_ordering=True)
    got = ps.subscriber.get_subscription(request={"subscription": sub}, timeout=REQUEST_TIMEOUT)
    assert got.enable_message_ordering is True
    ordered = ps.new_publisher(publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))
    keys = ["device-a", "device-b", "device-c"]
    messages = [(f"{keys[i % 3]}:{i:03d}".encode(), {"seq": str(i)}, keys[i % 3]) for i in range(100)]

    ids = ps.publish(topic, messages, publisher=ordered)

    stream = ps.stream(sub)
    deliveries = stream.wait_ids(ids, timeout=30, what="all 100 ordered messages")
    stream.stop()
    for key in keys:
        sent = [data for data, _, k in messages if k == key]
        received = [m.data for m in deliveries if m.ordering_key == key]
        # first delivery of each message, in the order the callback saw them
        first_seen = list(dict.fromkeys(received))
        assert first_seen == sent, f"{key}: out of order"
    assert {m.ordering_key for m in deliveries} == set(keys)


# ------------------------------------------------------------------------------------------------------------
# 6. filters


FILTER_MESSAGES = {
    b"t": {"subFolder": "temperature"},
    b"t-alarm": {"subFolder": "temperature", "alarm": "1"},
    b"h": {"subFolder": "humidity"},
    b"h-alarm": {"subFolder": "humidity", "alarm": "1"},
    b"none": {"subFolder": ""},
    b"t-high": {"subFolder": "temperature-high"},
}
FILTERS = {
    'attributes.subFolder = "temperature"': {b"t", b"t-alarm"},
    "attributes:alarm": {b"t-alarm", b"h-alarm"},
    'hasPrefix(attributes.subFolder, "temp")': {b"t", b"t-alarm", b"t-high"},
    "NOT attributes:alarm": {b"t", b"h", b"none", b"t-high"},
    "-attributes:alarm": {b"t", b"h", b"none", b"t-high"},
    'attributes.subFolder != "temperature"': {b"h", b"h-alarm", b"none", b"t-high"},
    'attributes.subFolder = "temperature" AND attributes:alarm': {b"t-alarm"},
    'attributes.subFolder = "humidity" OR attributes:alarm': {b"t-alarm", b"h", b"h-alarm"},
    '(attributes.subFolder = "humidity" OR attributes.subFolder = "") AND NOT attributes:alarm': {b"h", b"none"},
}


def test_filtered_subscriptions_get_only_matching_messages(ps):
    topic = ps.create_topic("sensordata")
    subs = {f: ps.create_subscription(f"filtered-{i}", topic, filter=f) for i, f in enumerate(FILTERS)}
    unfiltered = ps.create_subscription("unfiltered", topic)
    got = ps.subscriber.get_subscription(request={"subscription": subs['attributes.subFolder = "temperature"']},
                                         timeout=REQUEST_TIMEOUT)
    assert got.filter == 'attributes.subFolder = "temperature"'

    ps.publish(topic, FILTER_MESSAGES.items())

    assert set(by_data(ps.drain(unfiltered, len(FILTER_MESSAGES)))) == set(FILTER_MESSAGES)
    for expression, wanted in FILTERS.items():
        received = ps.drain(subs[expression], len(wanted))
        received += ps.pull_quiet(subs[expression], 0.2)
        assert sorted(by_data(received)) == sorted(wanted), f"filter {expression!r}"


def test_invalid_filters_are_invalid_argument(ps):
    topic = ps.create_topic("sensordata")
    for bad in ('attributes.subFolder = ', 'attributes.subFolder = "a" AND', "data = 'x'",
                'attributes.k = "' + "v" * 250 + '"'):  # the last one is > 256 bytes
        with pytest.raises(gexc.InvalidArgument):
            ps.create_subscription(uid("bad-filter"), topic, filter=bad)
    assert list(ps.subscriber.list_subscriptions(request={"project": f"projects/{ps.project}"},
                                                 timeout=REQUEST_TIMEOUT)) == []


# ------------------------------------------------------------------------------------------------------------
# 7. seek and snapshots


def test_seek_to_time_replays_acked_messages_with_retain_acked(ps):
    topic = ps.create_topic("sensordata")
    sub = ps.create_subscription("sensordata-sub", topic, retain_acked_messages=True)
    before = now_utc() - dt.timedelta(milliseconds=1)
    ids = ps.publish(topic, [(f"r{i}".encode(), {"i": str(i)}) for i in range(3)])
    ps.drain(sub, 3)
    assert ps.pull(sub) == []

    ps.subscriber.seek(request={"subscription": sub, "time": before}, timeout=REQUEST_TIMEOUT)
    replayed = ps.pull_until(sub, 3, what="messages replayed by seek to a time before the publish")
    assert sorted(r.message.message_id for r in replayed) == sorted(ids)
    assert sorted(r.message.data for r in replayed) == [b"r0", b"r1", b"r2"]

    # Seeking to a time after the publish marks them acked again (without acking the replayed deliveries).
    ps.subscriber.seek(request={"subscription": sub, "time": now_utc()}, timeout=REQUEST_TIMEOUT)
    ps.modack(sub, [r.ack_id for r in replayed], 0)  # release the leases: acked messages must still not come back
    assert ps.pull_quiet(sub, 0.5) == []


def test_snapshot_then_seek_restores_the_backlog(ps):
    topic = ps.create_topic("sensordata")
    sub = ps.create_subscription("sensordata-sub", topic)  # no retain_acked: the snapshot must keep its messages
    [old] = ps.publish(topic, [(b"acked-before-snapshot", {})])
    ps.drain(sub, 1)
    backlog = ps.publish(topic, [(b"b1", {}), (b"b2", {})])
    snap = ps.snapshot("before-processing")

    created = ps.subscriber.create_snapshot(request={"name": snap, "subscription": sub}, timeout=REQUEST_TIMEOUT)
    assert created.name == snap and created.topic == topic
    with pytest.raises(gexc.AlreadyExists):
        ps.subscriber.create_snapshot(request={"name": snap, "subscription": sub}, timeout=REQUEST_TIMEOUT)
    got = ps.subscriber.get_snapshot(request={"snapshot": snap}, timeout=REQUEST_TIMEOUT)
    assert got.topic == topic
    assert [s.name for s in ps.subscriber.list_snapshots(request={"project": f"projects/{ps.project}"},
                                                         timeout=REQUEST_TIMEOUT)] == [snap]

    later = ps.publish(topic, [(b"after-snapshot", {})])
    processed = ps.drain(sub, 3)
    assert sorted(r.message.message_id for r in processed) == sorted(backlog + later)
    assert ps.pull(sub) == []

    ps.subscriber.seek(request={"subscription": sub, "snapshot": snap}, timeout=REQUEST_TIMEOUT)
    replayed = ps.drain(sub, 3, timeout=15)
    replayed += ps.pull_quiet(sub, 0.3)
    assert sorted({r.message.message_id for r in replayed}) == sorted(backlog + later)
    assert old not in {r.message.message_id for r in replayed}

    ps.subscriber.delete_snapshot(request={"snapshot": snap}, timeout=REQUEST_TIMEOUT)
    with pytest.raises(gexc.NotFound):
        ps.subscriber.get_snapshot(request={"snapshot": snap}, timeout=REQUEST_TIMEOUT)
    with pytest.raises(gexc.NotFound):
        ps.subscriber.seek(request={"subscription": sub, "snapshot": snap}, timeout=REQUEST_TIMEOUT)


# ------------------------------------------------------------------------------------------------------------
# detach


def test_detached_subscription_fails_pull_and_streaming_pull_with_failed_precondition(ps):
    topic = ps.create_topic("sensordata")
    sub = ps.create_subscription("sensordata-sub", topic)
    ps.publish(topic, [(b"before detach", {})])

    ps.publisher.detach_subscription(request={"subscription": sub}, timeout=REQUEST_TIMEOUT)

    assert ps.subscriber.get_subscription(request={"subscription": sub}, timeout=REQUEST_TIMEOUT).detached is True
    with pytest.raises(gexc.FailedPrecondition):
        ps.subscriber.pull(request={"subscription": sub, "max_messages": 10}, timeout=REQUEST_TIMEOUT, retry=None)
    stream = ps.subscriber.subscribe(sub, lambda message: message.ack())
    try:
        with pytest.raises(gexc.FailedPrecondition):
            stream.result(timeout=15)
    finally:
        stream.cancel()
    ps.publish(topic, [(b"after detach", {})])  # the topic itself still works


# ------------------------------------------------------------------------------------------------------------
# 8. durability across restarts


def test_acks_survive_sigterm_restart_and_unacked_are_redelivered(private_ps):
    ps = private_ps
    topic = ps.create_topic("sensordata")
    sub = ps.create_subscription("sensordata-sub", topic)
    ids = ps.publish(topic, [(f"d{i}".encode(), {"i": str(i)}) for i in range(10)])
    received = ps.pull_until(sub, 10)
    acked = [r for r in received if int(r.message.attributes["i"]) % 2 == 0]
    nacked = [r for r in received if int(r.message.attributes["i"]) % 2 == 1]
    ps.ack(sub, [r.ack_id for r in acked])
    ps.modack(sub, [r.ack_id for r in nacked], 0)

    ps.server.restart()  # SIGTERM, exit 0, start again on the same data dir (new ports)
    ps.connect(ps.server)

    assert ps.subscriber.get_subscription(request={"subscription": sub}, timeout=REQUEST_TIMEOUT).topic == topic
    again = ps.pull_until(sub, len(nacked), timeout=15, what="the unacked messages after restart")
    again += ps.pull_quiet(sub, 1.0)
    assert sorted({r.message.message_id for r in again}) == sorted(r.message.message_id for r in nacked)
    ps.ack(sub, [r.ack_id for r in again])
    assert set(ids) == {r.message.message_id for r in received}


def test_acknowledged_publishes_survive_sigkill(private_ps):
    ps = private_ps
    topic = ps.create_topic("sensordata")
    sub = ps.create_subscription("sensordata-sub", topic)
    ids = ps.publish(topic, [(f"k{i}".encode(), {"i": str(i)}) for i in range(300)])

    ps.server.kill()  # SIGKILL right after every publish future resolved
    ps.server.start()
    ps.connect(ps.server)

    got = ps.drain(sub, len(ids), timeout=20)
    assert {r.message.message_id for r in got} == set(ids)
    for r in got:
        assert r.message.data == f"k{r.message.attributes['i']}".encode()
    ps.publish(topic, [(b"still works", {})])


def test_exactly_once_acks_are_durable_when_acknowledge_returns(private_ps):
    """Exactly-once (issue 12): a successful Acknowledge is a promise of no redelivery, so it must return only after
    the ack is on disk. SIGKILL right after the last Acknowledge returned, then restart: nothing comes back.
    (Before the fix acks reached disk up to 50 ms after the reply, so the last ones were redelivered.)"""
    ps = private_ps
    topic = ps.create_topic("eo-acks")
    sub = ps.create_subscription("eo-acks-sub", topic, enable_exactly_once_delivery=True)
    ids = ps.publish(topic, [(f"e{i}".encode(), {"i": str(i)}) for i in range(20)])
    received = ps.pull_until(sub, len(ids))
    for r in received:  # one Acknowledge per message: the last ones land between two background flushes
        ps.ack(sub, [r.ack_id])

    ps.server.kill()
    ps.server.start()
    ps.connect(ps.server)

    again = ps.pull_quiet(sub, 1.0)
    assert [r.message.message_id for r in again] == [], "acknowledged exactly-once messages were redelivered"
    later = ps.publish(topic, [(b"after", {})])
    assert [r.message.message_id for r in ps.drain(sub, 1)] == later


def _record_offsets(segment) -> list[int]:
    """Where each record of a message-log segment starts: `[u32 LE body length][u32 crc][body]`."""
    data = segment.read_bytes()
    offsets, at = [], 0
    while at + 8 <= len(data):
        offsets.append(at)
        at += 8 + int.from_bytes(data[at:at + 4], "little")
    return offsets


def _flip_body_byte(segment, record: int) -> None:
    at = _record_offsets(segment)[record] + 8 + 4
    with open(segment, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0xFF]))


def test_corrupt_sealed_and_active_log_segments_are_skipped_or_cut_and_delivery_goes_on(server_factory, project,
                                                                                     monkeypatch):
    """Issue 12: a bad record in a sealed segment is logged with its range and skipped (the file is kept); a bad
    record in the active segment cuts that segment there. Delivery continues past both; before the fix the hole a
    cut sealed segment left made the subscription jump to the head and skip every later message."""
    from pubsub_helpers import PubSub

    server = server_factory(dev=True, start=False)
    server.extra_args = ("--log-segment-bytes", "4096")
    ps = PubSub(server.start(), project, monkeypatch)
    try:
        topic = ps.create_topic("segments")
        sub = ps.create_subscription("segments-sub", topic)
        payload = b"x" * 200
        for batch in range(6):  # each request is > 4096 bytes, so each lands in a segment of its own
            ps.publish_raw(topic, [{"data": payload, "attributes": {"i": str(batch * 20 + j)}} for j in range(20)])
        server.stop()

        streams = list((server.data_dir / "pubsub" / "log").iterdir())
        assert len(streams) == 1, streams
        segments = sorted(streams[0].glob("*.seg"))
        assert len(segments) == 6, segments
        sealed, active = segments[1], segments[-1]
        sealed_size = sealed.stat().st_size
        _flip_body_byte(sealed, 3)   # i = 23..39 unreadable
        _flip_body_byte(active, 5)   # i = 105..119 cut off
        lost = set(range(23, 40)) | set(range(105, 120))

        server.start()
        ps.connect(server)
        expected = sorted(set(range(120)) - lost)
        got = ps.drain(sub, len(expected), timeout=20)
        got += ps.pull_quiet(sub, 1.0)
        assert sorted(int(r.message.attributes["i"]) for r in got) == expected
        assert sealed.stat().st_size == sealed_size, "a sealed segment must never be cut"
        log = server.log_path.read_text()
        assert "a sealed log segment is corrupt" in log and "first_unreadable_seq=24" in log, server.log_tail()
        assert "last_unreadable_seq=40" in log, server.log_tail()
        after = ps.publish(topic, [(b"after", {"i": "after"})])
        assert [r.message.message_id for r in ps.drain(sub, 1)] == after
    finally:
        ps.close()


# ------------------------------------------------------------------------------------------------------------
# 9. bad input and limits


def test_publish_limits_are_invalid_argument_and_the_edges_are_accepted(ps):
    """SPEC §7.4 over raw Publish RPCs. The gRPC server must decode requests somewhat larger than 10 MiB (tonic's
    default limit is 4 MiB) so that it can answer INVALID_ARGUMENT itself, and accept a 9 MB message."""
    topic = ps.create_topic("limits")
    ok = {"data": b"x"}
    e_acute = "\u00e9"  # 2 bytes in UTF-8: limits count bytes, not characters

    accepted = [
        ("1000 messages", [ok] * 1000),
        ("100 attributes", [{"attributes": {f"k{i}": "v" for i in range(100)}}]),
        ("256-byte key", [{"attributes": {"k" * 256: "v"}}]),
        ("1024-byte value", [{"attributes": {"k": "v" * 1024}}]),
        ("1024-byte multibyte value", [{"attributes": {"k": e_acute * 512}}]),
        ("attributes only", [{"attributes": {"only": "attrs"}}]),
        ("9 MB of data", [{"data": b"\x01" * 9_000_000}]),
    ]
    for label, messages in accepted:
        response = ps.publish_raw(topic, messages, timeout=60)
        assert len(response.message_ids) == len(messages), label

    rejected = [
        ("1001 messages", [ok] * 1001),
        ("101 attributes", [{"attributes": {f"k{i}": "v" for i in range(101)}}]),
        ("257-byte key", [{"attributes": {"k" * 257: "v"}}]),
        ("1025-byte value", [{"attributes": {"k": "v" * 1025}}]),
        ("1026-byte multibyte value", [{"attributes": {"k": e_acute * 513}}]),
        ("empty message", [{}]),
        ("empty message among good ones", [ok, {}, ok]),
        ("> 10 MB message", [{"data": b"\x02" * (10 * MiB + 1)}]),
        ("> 10 MB request", [{"data": b"\x03" * (7 * MiB // 2)}] * 3),  # 10.5 MiB, each message < 10 MB
    ]
    for label, messages in rejected:
        with pytest.raises(gexc.InvalidArgument):
            ps.publish_raw(topic, messages, timeout=60)
            pytest.fail(f"{label} was accepted")

    with pytest.raises(gexc.NotFound):
        ps.publish_raw(ps.topic("no-such-topic"), [ok])


BAD_IDS = [
    pytest.param("goog-topic", id="goog-prefix"),
    pytest.param("ab", id="2-chars"),
    pytest.param("1abc", id="leading-digit"),
    pytest.param("a" * 256, id="256-chars"),
    pytest.param("has space", id="space"),
    pytest.param("semi;colon", id="semicolon"),
    pytest.param("\u00fcn\u00efcode", id="non-ascii"),
]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_bad_resource_names_are_invalid_argument(ps, bad_id):
    with pytest.raises(gexc.InvalidArgument):
        ps.publisher.create_topic(request={"name": ps.topic(bad_id)}, timeout=REQUEST_TIMEOUT)
    topic = ps.create_topic(uid("good"))
    with pytest.raises(gexc.InvalidArgument):
        ps.subscriber.create_subscription(request={"name": ps.sub(bad_id), "topic": topic}, timeout=REQUEST_TIMEOUT)


def test_malformed_names_and_out_of_range_fields_are_invalid_argument(ps):
    for name in (f"projects/{ps.project}/topicz/abc", f"projects/{ps.project}/topics/", "topics/abc", "abc"):
        with pytest.raises(gexc.InvalidArgument):
            ps.publisher.create_topic(request={"name": name}, timeout=REQUEST_TIMEOUT)
    # the longest and most punctuated valid id works
    ps.create_topic("A" + "z" * 254)
    ps.create_topic("Ab-c.d_e+f~g%h")
    topic = ps.create_topic("sensordata")
    for deadline in (601, 5):
        with pytest.raises(gexc.InvalidArgument):
            ps.create_subscription(uid("bad-deadline"), topic, ack_deadline_seconds=deadline)
    sub = ps.create_subscription("good", topic, ack_deadline_seconds=600)
    with pytest.raises(gexc.InvalidArgument):
        ps.modack(sub, ["not-an-ack-id"], 601)


def test_streaming_pull_on_unknown_subscription_is_not_found(ps):
    stream = ps.subscriber.subscribe(ps.sub("no-such-sub"), lambda message: message.ack())
    try:
        with pytest.raises(gexc.NotFound):
            stream.result(timeout=15)
    finally:
        stream.cancel()
    with pytest.raises(gexc.NotFound):
        ps.subscriber.pull(request={"subscription": ps.sub("no-such-sub"), "max_messages": 1},
                           timeout=REQUEST_TIMEOUT, retry=None)


def test_garbage_on_the_grpc_port_does_not_affect_the_next_publish(ps):
    host, port = ps.server.grpc_target.rsplit(":", 1)
    h2_preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for junk in (os.urandom(4096),
                 h2_preface + b"\x00\x00\x04\xff\x00\x00\x00\x00\x00" + os.urandom(512),  # bogus frame type/flags
                 b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                 h2_preface[:10]):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(junk)
            sock.settimeout(0.5)
            try:
                sock.recv(4096)
            except (socket.timeout, ConnectionError):
                pass
    ps.server.assert_running()
    topic = ps.create_topic("sensordata")
    sub = ps.create_subscription("sensordata-sub", topic)
    [msg_id] = ps.publish(topic, [(b"after garbage", {})])
    assert [r.message.message_id for r in ps.drain(sub, 1)] == [msg_id]


def test_streaming_pull_splits_large_batches_for_the_4mib_client_limit(ps):
    """4 x 1.5 MiB: delivered all at once they would make a 6 MiB StreamingPullResponse, which the emulator-mode
    Python client (default 4 MiB receive limit) rejects and then reopens the stream forever."""
    topic = ps.create_topic("large")
    sub = ps.create_subscription("large-sub", topic)
    payloads = [(bytes([i]) * (3 * MiB // 2), {"i": str(i)}) for i in range(4)]
    ids = ps.publish(topic, payloads)

    stream = ps.stream(sub)
    deliveries = stream.wait_ids(ids, timeout=30, what="four 1.5 MiB messages")
    stream.stop()
    assert {m.data for m in deliveries} == {data for data, _ in payloads}


# ------------------------------------------------------------------------------------------------------------
# 10. emulator-style REST on the admin port


def rest_error(response: requests.Response, http: int, status: str) -> dict:
    assert response.status_code == http, (response.status_code, response.text)
    assert response.headers.get("Content-Type", "").startswith("application/json"), response.headers
    body = response.json()
    error = body["error"]
    assert error["code"] == http and error["status"] == status and isinstance(error["message"], str), body
    return error


def test_rest_topic_publish_pull_acknowledge(live_dev_server, project):
    base = f"{live_dev_server.admin_url}/v1"
    topic, sub = topic_path(project, "sensordata"), sub_path(project, "sensordata-sub")
    http = requests.Session()

    created = http.put(f"{base}/{topic}", timeout=REQUEST_TIMEOUT)  # empty body, like `curl -X PUT`
    assert created.status_code == 200, created.text
    assert created.json()["name"] == topic
    assert http.get(f"{base}/{topic}", timeout=REQUEST_TIMEOUT).json()["name"] == topic
    rest_error(http.put(f"{base}/{topic}", json={}, timeout=REQUEST_TIMEOUT), 409, "ALREADY_EXISTS")
    rest_error(http.get(f"{base}/{topic_path(project, 'missing')}", timeout=REQUEST_TIMEOUT), 404, "NOT_FOUND")
    rest_error(http.put(f"{base}/{topic_path(project, 'goog-bad')}", timeout=REQUEST_TIMEOUT), 400,
               "INVALID_ARGUMENT")

    made = http.put(f"{base}/{sub}", json={"topic": topic, "ackDeadlineSeconds": 10}, timeout=REQUEST_TIMEOUT)
    assert made.status_code == 200, made.text
    assert made.json()["topic"] == topic and made.json()["ackDeadlineSeconds"] == 10

    body = {"messages": [{"data": b64(b"\x00\xffhello+/"), "attributes": {"deviceId": "thermo-1"}},
                         {"attributes": {"only": "attributes"}}]}
    published = http.post(f"{base}/{topic}:publish", json=body, timeout=REQUEST_TIMEOUT)
    assert published.status_code == 200, published.text
    ids = published.json()["messageIds"]
    assert len(ids) == 2 and all(isinstance(i, str) and i for i in ids)
    rest_error(http.post(f"{base}/{topic}:publish", json={"messages": [{}]}, timeout=REQUEST_TIMEOUT), 400,
               "INVALID_ARGUMENT")
    rest_error(http.post(f"{base}/{topic_path(project, 'missing')}:publish", json=body, timeout=REQUEST_TIMEOUT),
               404, "NOT_FOUND")

    def pull_all(count: int) -> list:
        got: list = []

        def more():
            response = http.post(f"{base}/{sub}:pull", json={"maxMessages": 10, "returnImmediately": True},
                                 timeout=REQUEST_TIMEOUT)
            assert response.status_code == 200, response.text
            got.extend(response.json().get("receivedMessages", []))
            return len(got) >= count

        wait_until(more, 10, f"{count} messages over REST pull")
        return got

    received = pull_all(2)
    by_id = {r["message"]["messageId"]: r for r in received}
    assert sorted(by_id) == sorted(ids)
    first, second = by_id[ids[0]], by_id[ids[1]]
    assert base64.b64decode(first["message"]["data"]) == b"\x00\xffhello+/"
    assert first["message"]["attributes"] == {"deviceId": "thermo-1"}
    assert second["message"].get("data", "") == ""  # proto3 JSON omits empty bytes
    assert second["message"]["attributes"] == {"only": "attributes"}
    for r in received:
        assert isinstance(r["ackId"], str) and r["ackId"]
        publish_time = parse_rfc3339(r["message"]["publishTime"])
        assert abs((publish_time - now_utc()).total_seconds()) < 60
        assert r.get("deliveryAttempt", 0) == 0  # no dead-letter policy

    nacked = http.post(f"{base}/{sub}:modifyAckDeadline",
                       json={"ackIds": [first["ackId"]], "ackDeadlineSeconds": 0}, timeout=REQUEST_TIMEOUT)
    assert nacked.status_code == 200 and nacked.json() == {}, nacked.text
    [again] = pull_all(1)
    assert again["message"]["messageId"] == ids[0]

    acked = http.post(f"{base}/{sub}:acknowledge", json={"ackIds": [again["ackId"], second["ackId"]]},
                      timeout=REQUEST_TIMEOUT)
    assert acked.status_code == 200 and acked.json() == {}, acked.text
    empty = http.post(f"{base}/{sub}:pull", json={"maxMessages": 10, "returnImmediately": True},
                      timeout=REQUEST_TIMEOUT)
    assert empty.status_code == 200 and empty.json().get("receivedMessages", []) == [], empty.text
    rest_error(http.post(f"{base}/{sub_path(project, 'missing')}:pull", json={"maxMessages": 1},
                         timeout=REQUEST_TIMEOUT), 404, "NOT_FOUND")

    sought = http.post(f"{base}/{sub}:seek", json={"time": now_utc().strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
                       timeout=REQUEST_TIMEOUT)
    assert sought.status_code == 200 and sought.json() == {}, sought.text

    assert http.delete(f"{base}/{sub}", timeout=REQUEST_TIMEOUT).status_code == 200
    assert http.delete(f"{base}/{topic}", timeout=REQUEST_TIMEOUT).status_code == 200
    rest_error(http.get(f"{base}/{topic}", timeout=REQUEST_TIMEOUT), 404, "NOT_FOUND")
    rest_error(http.delete(f"{base}/{sub}", timeout=REQUEST_TIMEOUT), 404, "NOT_FOUND")


# ------------------------------------------------------------------------------------------------------------
# 11. push subscriptions


def test_push_wraps_the_message_and_a_204_acks_it(ps, push_endpoint):
    endpoint = push_endpoint(default=204)
    topic = ps.create_topic("sensordata")
    url = endpoint.url("/push/handler?token=s3cret")
    sub = ps.create_subscription("push-sub", topic, push_config={"push_endpoint": url})
    assert ps.subscriber.get_subscription(request={"subscription": sub},
                                          timeout=REQUEST_TIMEOUT).push_config.push_endpoint == url
    before = now_utc()
    [msg_id] = ps.publish(topic, [(b"\x00\xff{\"temperature\": 21.5}", {"deviceId": "thermo-1", "subFolder": ""})])

    [request] = endpoint.wait_for(1, timeout=15)
    assert request.path == "/push/handler?token=s3cret"
    assert request.headers.get("content-type", "").startswith("application/json")
    body = request.json()
    assert body["subscription"] == sub
    message = body["message"]
    assert base64.b64decode(message["data"]) == b"\x00\xff{\"temperature\": 21.5}"
    assert message["attributes"] == {"deviceId": "thermo-1", "subFolder": ""}
    assert message["messageId"] == message["message_id"] == msg_id
    assert message["publishTime"] == message["publish_time"]
    assert abs((parse_rfc3339(message["publishTime"]) - before).total_seconds()) < 30
    assert "deliveryAttempt" not in body  # only with a dead-letter policy (SPEC §7.8)

    time.sleep(1.5)  # a NACK would be retried within ~100 ms (SPEC §7.8 Perch choice): 204 must have acked
    assert len(endpoint.snapshot()) == 1


def test_push_500_is_retried_with_backoff_and_counts_delivery_attempts(ps, push_endpoint):
    endpoint = push_endpoint(statuses=[500, 503], default=200)
    topic = ps.create_topic("sensordata")
    dlq = ps.create_topic("sensordata-dlq")
    ps.create_subscription("push-sub", topic, push_config={"push_endpoint": endpoint.url()},
                           dead_letter_policy={"dead_letter_topic": dlq, "max_delivery_attempts": 5})
    [msg_id] = ps.publish(topic, [(b"flaky endpoint", {})])

    requests_ = endpoint.wait_for(3, timeout=30, what="push attempts (500, 503, then 200)")
    bodies = [r.json() for r in requests_]
    assert [b["message"]["messageId"] for b in bodies] == [msg_id] * 3
    assert [b.get("deliveryAttempt") for b in bodies] == [1, 2, 3]
    gaps = [b.at - a.at for a, b in zip(requests_, requests_[1:])]
    assert all(gap >= 0.05 for gap in gaps), f"retries without backoff: {gaps}"

    time.sleep(1.5)  # 200 acks: no fourth attempt
    assert len(endpoint.snapshot()) == 3


def test_push_redirects_are_failed_deliveries_not_followed(ps, push_endpoint):
    elsewhere = push_endpoint(default=204)
    endpoint = push_endpoint(statuses=[307, 302], default=204, redirect_to=elsewhere.url("/elsewhere"))
    topic = ps.create_topic("sensordata")
    ps.create_subscription("push-sub", topic, push_config={"push_endpoint": endpoint.url()})
    [msg_id] = ps.publish(topic, [(b"stay here", {})])

    requests_ = endpoint.wait_for(3, timeout=30, what="push attempts (307, 302, then 204)")
    assert [r.json()["message"]["messageId"] for r in requests_] == [msg_id] * 3
    assert elsewhere.snapshot() == [], "a redirect was followed"


def test_push_no_wrapper_sends_the_raw_data(ps, push_endpoint):
    endpoint = push_endpoint(default=204)
    topic = ps.create_topic("sensordata")
    ps.create_subscription("push-raw", topic,
                           push_config={"push_endpoint": endpoint.url("/raw"), "no_wrapper": {"write_metadata": False}})
    payload = b"\x00\x01raw bytes, not JSON \xff"

    ps.publish(topic, [(payload, {"deviceId": "thermo-1"})])

    [request] = endpoint.wait_for(1, timeout=15)
    assert request.path == "/raw"
    assert request.body == payload
