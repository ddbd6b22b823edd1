"""The Kafka adapter's parts that need no broker: offsets, wire format, configuration."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from txmq.adapters.base import Topology
from txmq.adapters.kafka import subscription as kafka_subscription
from txmq.adapters.kafka.adapter import KafkaAdapter
from txmq.adapters.kafka.client import ClientEvents, KafkaContext, LibrdkafkaLog
from txmq.adapters.kafka.offsets import OffsetTracker, Position
from txmq.adapters.kafka.settings import KafkaSettings
from txmq.adapters.kafka.subscription import KafkaSubscription, prefetch_config
from txmq.adapters.kafka.wire import decode_message, decode_record, encode_headers, encode_key
from txmq.adapters.registry import parse_broker_url
from txmq.errors import MessageDecodeError, MissingDependency
from txmq.message import Message

URL = (
    "kafka://127.0.0.1:9092?security.protocol=SASL_PLAINTEXT&sasl.mechanism=PLAIN"
    "&sasl.username=app&sasl.password=hunter2&ssl.key.password=s3cret-key"
)
P = ("orders", 0)


def settings(url: str = URL) -> KafkaSettings:
    parsed = parse_broker_url(url)
    assert isinstance(parsed, KafkaSettings)
    return parsed


def tracked(tracker: OffsetTracker, *offsets: int, partition: int = 0) -> list[Position]:
    return [tracker.track("orders", partition, offset)[0] for offset in offsets]


# --- offset tracker -------------------------------------------------------------------


def test_commit_waits_for_the_oldest_unfinished_offset() -> None:
    tracker = OffsetTracker()
    tracker.assign([P])
    positions = tracked(tracker, *range(10, 16))
    for position in positions[1:]:
        tracker.done(position)
    assert tracker.commit_points() == {}
    assert tracker.pending(P) == list(range(10, 16))
    tracker.done(positions[0])
    assert tracker.commit_points() == {P: 16}
    assert tracker.pending(P) == []


def test_commit_advances_to_the_first_gap_in_finished_offsets() -> None:
    tracker = OffsetTracker()
    tracker.assign([P])
    a, b, c, d = tracked(tracker, 0, 1, 2, 3)
    tracker.done(a)
    tracker.done(b)
    tracker.done(d)
    assert tracker.commit_points() == {P: 2}
    tracker.done(c)
    assert tracker.commit_points() == {P: 4}


def test_offsets_never_delivered_do_not_hold_the_commit() -> None:
    # Transaction markers and aborted records take offsets that are never delivered.
    tracker = OffsetTracker()
    tracker.assign([P])
    a, b = tracked(tracker, 4, 7)
    tracker.done(b)
    assert tracker.commit_points() == {}
    tracker.done(a)
    assert tracker.commit_points() == {P: 8}


def test_a_commit_point_is_offered_until_requested_and_again_after_it_failed() -> None:
    tracker = OffsetTracker()
    tracker.assign([P])
    a, b = tracked(tracker, 0, 1)
    tracker.done(a)
    assert tracker.commit_points() == {P: 1}
    assert tracker.commit_points() == {P: 1}  # e.g. the commit could not be sent: offered again
    tracker.requested(P, 1)
    assert tracker.commit_points() == {}
    tracker.done(b)
    tracker.requested(P, 2)
    tracker.failed(P, 1)  # an older commit's failure: the newer one covers it
    assert tracker.commit_points() == {}
    tracker.failed(P, 2)
    assert tracker.commit_points() == {P: 2}


def test_unconfirmed_offsets_include_those_requested_but_not_confirmed() -> None:
    # A synchronous commit (rebalance, close) must not trust asynchronous ones in flight.
    tracker = OffsetTracker()
    tracker.assign([P, ("orders", 1)])
    a, b = tracked(tracker, 4, 5)
    tracked(tracker, 0, partition=1)  # nothing finished there: nothing to commit
    tracker.done(a)
    tracker.requested(P, 5)
    assert tracker.commit_points() == {}
    assert tracker.unconfirmed() == {P: 5}
    assert tracker.unconfirmed([("orders", 1), ("orders", 2)]) == {}
    tracker.confirmed(P, 5)
    assert tracker.unconfirmed() == {}
    tracker.done(b)
    tracker.confirmed(P, 6)  # e.g. a synchronous commit: no asynchronous one needed
    tracker.confirmed(P, 5)  # a late confirmation of an older commit changes nothing
    assert tracker.commit_points() == {}
    assert tracker.unconfirmed() == {}


def test_partitions_are_tracked_independently() -> None:
    tracker = OffsetTracker()
    tracker.assign([P, ("orders", 1)])
    [p0] = tracked(tracker, 5, partition=0)
    [p1_first, p1_second] = tracked(tracker, 0, 1, partition=1)
    tracker.done(p0)
    tracker.done(p1_second)
    assert tracker.commit_points() == {P: 6}
    assert tracker.commit_points([("orders", 1)]) == {}
    tracker.done(p1_first)
    assert tracker.commit_points([("orders", 1)]) == {("orders", 1): 2}


def test_acks_from_an_earlier_assignment_are_ignored() -> None:
    tracker = OffsetTracker()
    tracker.assign([P])
    [stale] = tracked(tracker, 0)
    tracker.revoke([P])
    tracker.done(stale)
    assert tracker.commit_points() == {}
    tracker.assign([P])  # assigned back: offset 0 comes again under a new epoch
    [fresh] = tracked(tracker, 0)
    assert fresh.epoch != stale.epoch
    tracker.done(stale)
    assert tracker.commit_points() == {}
    tracker.done(fresh)
    assert tracker.commit_points() == {P: 1}


def test_release_forgets_the_position_and_everything_after_it() -> None:
    tracker = OffsetTracker()
    tracker.assign([P])
    a, b, c = tracked(tracker, 0, 1, 2)
    tracker.done(c)
    assert tracker.release(b)
    assert tracker.pending(P) == [0]
    tracker.done(a)
    assert tracker.commit_points() == {P: 1}
    # After the seek back, 1 and 2 come again and count as redelivered.
    (b2, again_b), (c2, again_c) = tracker.track("orders", 0, 1), tracker.track("orders", 0, 2)
    assert again_b
    assert again_c
    tracker.done(c2)
    assert tracker.commit_points() == {P: 1}
    tracker.done(b2)
    assert tracker.commit_points() == {P: 3}


def test_release_of_a_finished_or_stale_position_does_nothing() -> None:
    tracker = OffsetTracker()
    tracker.assign([P])
    a, b = tracked(tracker, 0, 1)
    tracker.done(a)
    assert not tracker.release(a)
    assert tracker.pending(P) == [1]
    tracker.revoke([P])
    assert not tracker.release(b)


def test_first_deliveries_are_not_redelivered() -> None:
    tracker = OffsetTracker()
    assert tracker.track("orders", 0, 3)[1] is False  # unannounced partition: tracked anyway
    assert tracker.track("orders", 0, 4)[1] is False
    assert tracker.track("orders", 0, 4)[1] is True


# --- wire format ----------------------------------------------------------------------


def test_encode_adds_id_topic_and_key_headers() -> None:
    message = Message("orders.created", b"{}", key="customer-7", headers={"a": "1"})
    assert dict(encode_headers(message)) == {
        "a": b"1",
        "x-txmq-id": message.id.encode(),
        "x-txmq-topic": b"orders.created",
        "x-txmq-key": b"customer-7",
    }
    assert encode_key(message) == b"customer-7"


def test_encode_without_key_has_no_record_key_or_key_header() -> None:
    message = Message("t", b"")
    assert encode_key(message) is None
    assert "x-txmq-key" not in dict(encode_headers(message))


def test_structural_headers_in_message_headers_are_not_duplicated() -> None:
    message = Message("t", b"", headers={"x-txmq-id": "stale", "x-txmq-attempt": "2"})
    names = [name for name, _ in encode_headers(message)]
    assert names.count("x-txmq-id") == 1
    assert dict(encode_headers(message))["x-txmq-id"] == message.id.encode()
    assert "x-txmq-attempt" in names


def test_round_trip_gives_the_same_message() -> None:
    message = Message("orders", b"\x00body", key="k", headers={"x-txmq-attempt": "3", "h": "v"})
    decoded = decode_message(
        "g.orders.retry.1", encode_key(message), message.body, encode_headers(message)
    )
    assert decoded == message
    assert decoded.topic == "orders"  # the logical topic, not the retry topic


def test_topic_falls_back_to_the_kafka_topic_and_key_to_the_record_key() -> None:
    decoded = decode_message("orders", b"rk", b"x", [("x-txmq-id", b"id-1")])
    assert (decoded.topic, decoded.key, decoded.id) == ("orders", "rk", "id-1")
    assert decode_message("orders", b"", None, {"x-txmq-id": "id-2"}).key is None


@pytest.mark.parametrize(
    ("key", "headers", "reason"),
    [
        (None, [("foo", b"bar")], "no x-txmq-id"),
        (None, [("x-txmq-id", b"")], "no x-txmq-id"),
        (None, [("x-txmq-id", None)], "no x-txmq-id"),
        (None, None, "no x-txmq-id"),
        (None, [("x-txmq-id", b"1"), ("h", b"\xff")], "not UTF-8"),
        (b"\xff", [("x-txmq-id", b"1")], "key is not UTF-8"),
        (None, [("x-txmq-id", b"1"), ("x-txmq-topic", b"bad topic!")], "not a valid"),
    ],
)
def test_undecodable_records(
    key: bytes | None, headers: list[tuple[str, bytes | None]] | None, reason: str
) -> None:
    with pytest.raises(MessageDecodeError, match=reason):
        decode_message("orders", key, b"v", headers)
    delivery = decode_record(
        source="orders", key=key, value=b"v", headers=headers, token="tok", redelivered=False
    )
    assert delivery.message is None
    assert isinstance(delivery.decode_error, MessageDecodeError)
    assert (delivery.raw_body, delivery.token, delivery.source) == (b"v", "tok", "orders")


def test_undecodable_record_keeps_readable_headers() -> None:
    delivery = decode_record(
        source="t",
        key=None,
        value=None,
        headers=[("h", b"\xffok"), ("x-txmq-attempt", b"4")],
        token=None,
        redelivered=True,
    )
    assert delivery.raw_body == b""
    assert delivery.raw_headers == {"h": "\ufffdok", "x-txmq-attempt": "4"}
    assert delivery.attempt == 4


# --- configuration and secrets ----------------------------------------------------------


def test_config_layers_defaults_then_url_options_then_required() -> None:
    context = KafkaContext(settings(URL + "&linger.ms=50&enable.idempotence=false"))
    config = context.config(
        ClientEvents(context, "test"),
        defaults={"linger.ms": 5, "session.timeout.ms": 10_000},
        required={"enable.idempotence": True},
    )
    assert config["bootstrap.servers"] == "127.0.0.1:9092"
    assert config["linger.ms"] == "50"
    assert config["session.timeout.ms"] == 10_000
    assert config["enable.idempotence"] is True
    assert config["sasl.password"] == "hunter2"  # librdkafka needs it; nothing prints it


def test_scrub_removes_secret_values_wherever_they_appear() -> None:
    context = KafkaContext(settings())
    text = context.scrub("auth as app/hunter2 with s3cret-key failed; url kafka://u:pw@h:1")
    assert "hunter2" not in text
    assert "s3cret-key" not in text
    assert "pw@" not in text
    assert "hunter2" not in context.url


def test_librdkafka_log_lines_are_scrubbed_and_transport_noise_demoted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="txmq")
    log = LibrdkafkaLog(KafkaContext(settings()).scrub)
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "refused")
    log.log(logging.ERROR, "%s [%s] %s", "SASL", "rdkafka#producer-1", "bad pw hunter2")
    log.log(logging.INFO, "%s [%s] %s", "INIT", "rdkafka#producer-1", "hello")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "FAIL [rdkafka#producer-1] refused"),
        (logging.WARNING, "SASL [rdkafka#producer-1] bad pw ***"),
        (logging.DEBUG, "INIT [rdkafka#producer-1] hello"),
    ]


def test_prefetch_sizes_the_fetch_buffer() -> None:
    assert prefetch_config(100) == {
        "queued.min.messages": 100,
        "queued.max.messages.kbytes": 1600,
        # librdkafka's default (1 s) pauses a small buffer's refill: ~7k msg/s at most.
        "fetch.queue.backoff.ms": 10,
    }
    assert prefetch_config(0)["queued.min.messages"] == 1
    assert prefetch_config(1)["queued.max.messages.kbytes"] == 1024
    assert prefetch_config(1_000_000)["queued.max.messages.kbytes"] == 65_536


def test_adapter_repr_and_sources_need_no_broker() -> None:
    adapter = KafkaAdapter(settings())
    assert "hunter2" not in repr(adapter)
    topology = Topology("billing", "orders", retry_delays=(1.0, 2.0))
    assert adapter.sources_for([topology, topology]) == [
        "orders",
        "billing.orders.retry.1",
        "billing.orders.retry.2",
    ]
    adapter.close()
    adapter.close()


def test_missing_confluent_kafka_asks_for_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    monkeypatch.delitem(sys.modules, "txmq.adapters.kafka.adapter")
    with pytest.raises(MissingDependency, match=r"pip install 'txmq\[kafka\]'"):
        importlib.import_module("txmq.adapters.kafka.adapter")


# --- subscription commits, against a stand-in for confluent-kafka's Consumer -----------


class _Record:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._where = (topic, partition, offset)
        self._message = Message(topic, b"%d" % offset)

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def key(self) -> None:
        return None

    def value(self) -> bytes:
        return self._message.body

    def headers(self) -> list[tuple[str, bytes]]:
        return encode_headers(self._message)


class _FakeConsumer:
    """Records commits; hands out the records it was given; close revokes its partitions."""

    def __init__(self, config: dict[str, object]) -> None:
        self.on_commit = config["on_commit"]
        self.records: list[_Record] = []
        self.commits: list[tuple[str, dict[tuple[str, int], int]]] = []
        self.callbacks: dict[str, Any] = {}
        self.assigned: list[TopicPartition] = []

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions

    def poll(self, timeout: float) -> _Record | None:
        return self.records.pop(0) if self.records else None

    def consume(self, num_messages: int, timeout: float) -> list[_Record]:
        taken, self.records = self.records[:num_messages], self.records[num_messages:]
        return taken

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> Any:
        mode = "async" if asynchronous else "sync"
        self.commits.append((mode, {(tp.topic, tp.partition): tp.offset for tp in offsets}))
        return None if asynchronous else offsets

    def close(self) -> None:
        self.callbacks["on_revoke"](self, self.assigned)


@pytest.fixture
def fake_subscription(monkeypatch: pytest.MonkeyPatch) -> tuple[KafkaSubscription, _FakeConsumer]:
    monkeypatch.setattr(kafka_subscription, "Consumer", _FakeConsumer)
    subscription = KafkaSubscription(
        KafkaContext(settings("kafka://127.0.0.1:9092")), "g", ["orders"], prefetch=10
    )
    consumer = subscription._consumer
    assert isinstance(consumer, _FakeConsumer)
    partition = TopicPartition("orders", 0)
    consumer.callbacks["on_assign"](consumer, [partition])
    consumer.records = [_Record("orders", 0, offset) for offset in range(100)]
    return subscription, consumer


def test_acks_are_committed_asynchronously_at_most_once_per_interval(
    fake_subscription: tuple[KafkaSubscription, _FakeConsumer], monkeypatch: pytest.MonkeyPatch
) -> None:
    subscription, consumer = fake_subscription
    monkeypatch.setattr(kafka_subscription, "COMMIT_INTERVAL", 3600.0)
    deliveries = subscription.poll(0, max_messages=100)
    assert len(deliveries) == 100
    for delivery in deliveries[:50]:
        subscription.ack([delivery])
    assert consumer.commits == [("async", {P: 1})]  # the rest waits for the interval
    subscription.close()
    assert consumer.commits[1:] == [("sync", {P: 50})]  # close covers what is finished


def test_a_failed_asynchronous_commit_is_sent_again(
    fake_subscription: tuple[KafkaSubscription, _FakeConsumer], monkeypatch: pytest.MonkeyPatch
) -> None:
    subscription, consumer = fake_subscription
    monkeypatch.setattr(kafka_subscription, "COMMIT_INTERVAL", 0.0)
    deliveries = subscription.poll(0, max_messages=100)
    subscription.ack(deliveries[:3])
    subscription.ack([])  # nothing new: nothing sent
    assert consumer.commits == [("async", {P: 3})]
    consumer.on_commit(KafkaError(KafkaError.REQUEST_TIMED_OUT), [TopicPartition(*P, 3)])
    subscription.poll(0, max_messages=0)
    assert consumer.commits[1:] == [("async", {P: 3})]


def test_a_revoked_partition_is_committed_synchronously(
    fake_subscription: tuple[KafkaSubscription, _FakeConsumer], monkeypatch: pytest.MonkeyPatch
) -> None:
    subscription, consumer = fake_subscription
    monkeypatch.setattr(kafka_subscription, "COMMIT_INTERVAL", 0.0)
    deliveries = subscription.poll(0, max_messages=100)
    subscription.ack(deliveries[:2])
    consumer.callbacks["on_revoke"](consumer, consumer.assigned)
    assert consumer.commits == [("async", {P: 2}), ("sync", {P: 2})]
    subscription.ack(deliveries[2:4])  # revoked: the next owner reads them again
    subscription.close()
    assert len(consumer.commits) == 2


def test_close_tries_its_synchronous_commit_once(
    fake_subscription: tuple[KafkaSubscription, _FakeConsumer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a coordinator a synchronous commit fails only after session.timeout.ms (10 s);
    # the revocation inside Consumer.close() must not wait that long a second time.
    subscription, consumer = fake_subscription
    monkeypatch.setattr(kafka_subscription, "COMMIT_INTERVAL", 3600.0)
    subscription.ack(subscription.poll(0, max_messages=5))

    def no_coordinator(*, offsets: list[TopicPartition], asynchronous: bool) -> None:
        consumer.commits.append(("sync", {}))
        raise KafkaException(KafkaError(KafkaError._WAIT_COORD))

    monkeypatch.setattr(consumer, "commit", no_coordinator)
    subscription.close()
    assert consumer.commits == [("async", {P: 5}), ("sync", {})]


class _ListOffsetsAdmin:
    """An admin client whose ``list_offsets`` fails ``failures`` times with ``code``."""

    def __init__(self, code: int, failures: int) -> None:
        self.code, self.failures, self.calls = code, failures, 0

    def list_offsets(self, wanted: dict[Any, Any], request_timeout: float) -> dict[Any, Any]:
        import concurrent.futures

        self.calls += 1
        futures: dict[Any, Any] = {}
        for tp in wanted:
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            if self.calls <= self.failures:
                future.set_exception(KafkaException(KafkaError(self.code)))
            else:
                future.set_result(type("Listed", (), {"offset": 7})())
            futures[tp] = future
        return futures


def test_offsets_of_a_partition_without_a_leader_yet_are_asked_again() -> None:
    """Seen in CI: the DLQ depth sampled right after a consumer declared the topic failed
    with NOT_LEADER_FOR_PARTITION, an error Kafka says to retry."""
    from confluent_kafka.admin import OffsetSpec

    adapter = KafkaAdapter(parse_broker_url("kafka://127.0.0.1:1?publish_timeout=5"))  # type: ignore[arg-type]
    admin = _ListOffsetsAdmin(KafkaError.NOT_LEADER_FOR_PARTITION, failures=2)
    offsets = adapter._offsets(admin, [TopicPartition("t", 0)], OffsetSpec.latest())  # type: ignore[arg-type, no-untyped-call]
    assert offsets == {0: 7}
    assert admin.calls == 3


def test_offsets_are_not_asked_again_after_an_error_retrying_cannot_fix() -> None:
    from confluent_kafka.admin import OffsetSpec

    from txmq.errors import TopologyError

    adapter = KafkaAdapter(parse_broker_url("kafka://127.0.0.1:1"))  # type: ignore[arg-type]
    admin = _ListOffsetsAdmin(KafkaError.TOPIC_AUTHORIZATION_FAILED, failures=1)
    with pytest.raises(TopologyError, match="TOPIC_AUTHORIZATION_FAILED"):
        adapter._offsets(admin, [TopicPartition("t", 0)], OffsetSpec.latest())  # type: ignore[arg-type, no-untyped-call]
    assert admin.calls == 1


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("", 30_000),  # the publish timeout
        ("publish_timeout=10", 10_000),
        ("publish_timeout=0.2", 1_000),  # librdkafka's least
        ("publish_timeout=10&message.timeout.ms=30000", 30_000),
        ("publish_timeout=10&delivery.timeout.ms=15000", 15_000),
        ("publish_timeout=10&socket.timeout.ms=30000", 29_900),
        ("publish_timeout=10&transaction.timeout.ms=20000", 20_000),
    ],
)
def test_a_relay_lanes_transaction_timeout_is_the_publish_timeout_or_what_the_url_needs(
    options: str, expected: int
) -> None:
    """librdkafka refuses a transactional producer whose delivery timeouts exceed its
    ``transaction.timeout.ms``: at 10 s, a URL that set ``message.timeout.ms=30000``
    (fine at 60 s) broke every relay lane."""
    from confluent_kafka import Producer

    url = "kafka://127.0.0.1:1" + (f"?{options}" if options else "")
    adapter = KafkaAdapter(parse_broker_url(url))  # type: ignore[arg-type]
    lane = adapter.publisher(identity="lane")
    config = lane._producer_config()  # type: ignore[attr-defined]
    assert config["transaction.timeout.ms"] in (expected, str(expected))
    Producer(config)  # librdkafka checks the configuration here, without a broker
