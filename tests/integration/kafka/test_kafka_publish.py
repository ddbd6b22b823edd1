"""Publishing to a real Kafka: plain and transactional batches, fencing, limits, failures."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

import txmq
from txmq.adapters.base import Subscription, Topology
from txmq.adapters.kafka.adapter import KafkaAdapter, KafkaTransactionalPublisher
from txmq.errors import BrokerUnavailable, MessageTooLarge, PublishError
from txmq.message import Message
from txmq.wire import Delivery

pytestmark = pytest.mark.broker

Declared = Callable[..., Topology]
Drain = Callable[..., list[Delivery]]


def _messages(topic: str, count: int, *, keys: int = 5, size: int = 20) -> list[Message]:
    return [
        Message(
            topic, f"{i:06d}".encode().ljust(size, b"."), key=f"k{i % keys}", headers={"n": str(i)}
        )
        for i in range(count)
    ]


def with_option(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


def _transactional(adapter: KafkaAdapter, tid: str) -> KafkaTransactionalPublisher:
    publisher = adapter.publisher(identity=tid)
    assert isinstance(publisher, KafkaTransactionalPublisher)
    return publisher


def test_publish_n_then_consume_n(adapter: KafkaAdapter, declared: Declared, drain: Drain) -> None:
    topology = declared()
    sent = _messages(topology.topic, 2000)
    with adapter.publisher() as publisher:
        for start in range(0, len(sent), 500):
            outcomes = publisher.publish(sent[start : start + 500])
            assert [o.message_id for o in outcomes] == [m.id for m in sent[start : start + 500]]
            assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok][:3]
    with adapter.subscribe(topology.group, adapter.sources_for([topology])) as subscription:
        received = drain(subscription, len(sent), timeout=60)
    assert sorted(d.message.id for d in received if d.message) == sorted(m.id for m in sent)
    by_id = {m.id: m for m in sent}
    assert all(d.message == by_id[d.message.id] for d in received if d.message)
    assert all(d.source == topology.topic and not d.redelivered for d in received)


def test_per_key_order_is_kept(adapter: KafkaAdapter, declared: Declared, drain: Drain) -> None:
    topology = declared()
    sent = _messages(topology.topic, 300, keys=7)
    with adapter.publisher() as publisher:
        for start in range(0, 300, 50):
            assert all(o.ok for o in publisher.publish(sent[start : start + 50]))
    with adapter.subscribe(topology.group, [topology.topic]) as subscription:
        received = drain(subscription, 300)
    for key in {m.key for m in sent}:
        got = [d.message.headers["n"] for d in received if d.message and d.message.key == key]
        assert got == [m.headers["n"] for m in sent if m.key == key]


def test_transactional_batch_is_visible_to_read_committed(
    adapter: KafkaAdapter, declared: Declared, unique: Callable[[str], str], drain: Drain
) -> None:
    topology = declared()
    sent = _messages(topology.topic, 50)
    with _transactional(adapter, unique("tx")) as publisher:
        outcomes = publisher.publish(sent)
        assert all(o.ok for o in outcomes)
        assert publisher.publish([]) == []
    with adapter.subscribe(topology.group, [topology.topic]) as subscription:
        received = drain(subscription, 50)
    assert {d.message.id for d in received if d.message} == {m.id for m in sent}


def test_aborted_transaction_is_never_delivered(
    adapter: KafkaAdapter, declared: Declared, unique: Callable[[str], str], drain: Drain
) -> None:
    topology = declared()
    aborted = Message(topology.topic, b"aborted", key="same")
    later = Message(topology.topic, b"later", key="same")
    with _transactional(adapter, unique("tx")) as publisher:
        publisher.begin()
        publisher.produce([aborted])
        publisher.abort()
        publisher.abort()  # nothing open: a no-op
        assert publisher.publish([later])[0].ok
    with adapter.subscribe(topology.group, [topology.topic]) as subscription:
        received = drain(subscription, 1)
    assert [d.message.id for d in received if d.message] == [later.id]
    listed = adapter.read_queue(topology.topic, limit=10, timeout=10)
    assert [d.message.id for d in listed if d.message] == [later.id]


def test_open_transaction_is_invisible_until_committed(
    adapter: KafkaAdapter, declared: Declared, unique: Callable[[str], str], drain: Drain
) -> None:
    topology = declared()
    half = Message(topology.topic, b"half", key="half")
    later = [Message(topology.topic, b"later", key=f"key-{i}") for i in range(12)]
    with (
        _transactional(adapter, unique("half")) as half_publisher,
        _transactional(adapter, unique("relay")) as relay,
        adapter.subscribe(topology.group, [topology.topic]) as subscription,
    ):
        half_publisher.begin()
        half_publisher.produce([half])
        assert all(o.ok for o in relay.publish(later))
        # Later committed records on other partitions arrive; the open one does not
        # (nor do records behind it on its partition: read_committed stops at it).
        before = drain(subscription, 1)
        before += subscription.poll(1.0, max_messages=100)
        subscription.ack(before)
        assert before
        assert half.id not in {d.message.id for d in before if d.message}
        half_publisher.commit()
        after = drain(subscription, len(later) + 1 - len(before))
    received = [d.message.id for d in before + after if d.message]
    assert sorted(received) == sorted([half.id, *(m.id for m in later)])


def test_send_to_queue_keeps_the_logical_topic(
    adapter: KafkaAdapter, declared: Declared, unique: Callable[[str], str]
) -> None:
    topology = declared(retry_delays=(1.0,))
    message = Message(topology.topic, b"failed", key="k", headers={"x-txmq-attempt": "3"})
    with adapter.publisher() as publisher:
        assert publisher.send_to_queue(topology.dead_letter_queue, [message])[0].ok
    with _transactional(adapter, unique("tx")) as publisher:
        assert publisher.send_to_queue(topology.retry_queues()[0], [message])[0].ok
    for queue in (topology.dead_letter_queue, topology.retry_queues()[0]):
        [listed] = adapter.read_queue(queue, limit=10, timeout=10)
        assert listed.message == message
        assert listed.source == queue
        assert listed.attempt == 3


def test_oversized_batch_is_refused_whole(adapter: KafkaAdapter, declared: Declared) -> None:
    topology = declared()
    limit = adapter.settings.common.max_body_bytes
    batch = [Message(topology.topic, b"small"), Message(topology.topic, b"x" * (limit + 1))]
    with adapter.publisher() as publisher, pytest.raises(MessageTooLarge):
        publisher.publish(batch)
    with adapter.publisher(identity=f"{topology.group}-tx") as publisher:
        with pytest.raises(MessageTooLarge):
            publisher.publish(batch)
        # The oversized attempt left no transaction open: the publisher still works.
        assert publisher.publish(batch[:1])[0].ok
    listed = adapter.read_queue(topology.topic, limit=10, timeout=10)
    assert [d.message.id for d in listed if d.message] == [batch[0].id]


def test_fenced_producer_reinitialises_without_losing_or_duplicating(
    adapter: KafkaAdapter,
    declared: Declared,
    unique: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="txmq.adapters.kafka")
    topology = declared()
    tid = unique("fenced")
    first, second, third, fourth = (_messages(topology.topic, 5, keys=3) for _ in range(4))
    zombie = _transactional(adapter, tid)
    successor = _transactional(adapter, tid)
    try:
        assert all(o.ok for o in zombie.publish(first))
        assert all(o.ok for o in successor.publish(second))  # fences the zombie
        # The zombie's next batch finds it fenced, re-initialises (fencing the other
        # in turn) and sends the batch in a new transaction.
        outcomes = zombie.publish(third)
        assert all(o.ok for o in outcomes), outcomes
        assert "sending the batch once more" in caplog.text
        assert all(o.ok for o in successor.publish(fourth))
    finally:
        zombie.close()
        successor.close()
    listed = adapter.read_queue(topology.topic, limit=100, timeout=15)
    ids = [d.message.id for d in listed if d.message]
    assert sorted(ids) == sorted(m.id for m in first + second + third + fourth)


def test_a_fenced_producer_abort_raises_a_txmq_error_and_the_next_transaction_begins(
    adapter: KafkaAdapter, declared: Declared, unique: Callable[[str], str]
) -> None:
    """A producer failed for good raises its fatal error from ``poll`` too. Dropping it
    while aborting let that escape as a raw ``KafkaException`` (through
    ``Producer.send_in_transaction`` on a three-node cluster, after a coordinator moved)
    and left the publisher believing it was initialised: the next ``begin`` failed."""
    topology = declared()
    tid = unique("fenced-abort")
    zombie = _transactional(adapter, tid)
    successor = _transactional(adapter, tid)
    try:
        zombie.begin()
        zombie.produce(_messages(topology.topic, 2))
        assert all(o.ok for o in successor.publish(_messages(topology.topic, 2)))  # fences it
        with pytest.raises(BrokerUnavailable, match="did not confirm the abort"):
            zombie.abort()
        zombie.begin()
        last = _messages(topology.topic, 3)
        zombie.produce(last)
        zombie.commit()
    finally:
        zombie.close()
        successor.close()
    listed = adapter.read_queue(topology.topic, limit=100, timeout=15)
    assert {m.id for m in last} <= {d.message.id for d in listed if d.message}


#: A relay lane that opens a transaction, produces one record to it, waits until the record
#: is on the broker (the partition is in the transaction), says so, and hangs until killed.
_OPEN_A_TRANSACTION_AND_HANG = """
import sys, threading
import txmq
from txmq.message import Message

url, identity, topic = sys.argv[1:]
lane = txmq.connect(url).publisher(identity=identity)
lane.begin()
lane.produce([Message(topic, b"never committed", key="same")])
lane._client().flush(30)
print("open", flush=True)
threading.Event().wait()
"""


def test_a_relay_killed_in_a_transaction_stalls_its_partition_for_its_publish_timeout(
    adapter: KafkaAdapter,
    kafka_url: str,
    declared: Declared,
    unique: Callable[[str], str],
    drain: Drain,
) -> None:
    """A relay lane SIGKILLed between produce and commit leaves its transaction open, and
    read_committed readers of that partition see nothing behind it until the broker aborts
    it. A new relay has a new ``transactional.id`` (the default ``instance_id`` is
    random), so it cannot fence the dead one: only the relay's ``transaction.timeout.ms``
    bounds the stall, now its publish timeout (10 s here). At a fixed 60 s it stalled a
    saga whose orchestrator was killed past the 60 s the takeover test waits."""
    topology = declared()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _OPEN_A_TRANSACTION_AND_HANG,
            with_option(kafka_url, "publish_timeout=10"),
            unique("dead"),
            topology.topic,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "open", process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait(30)
    killed = time.monotonic()
    after = Message(topology.topic, b"committed after the kill", key="same")
    with (
        _transactional(adapter, unique("successor")) as successor,
        adapter.subscribe(topology.group, [topology.topic]) as subscription,
    ):
        assert all(o.ok for o in successor.publish([after]))
        received = drain(subscription, 1, timeout=30)
    stalled = time.monotonic() - killed
    assert [d.message.id for d in received if d.message] == [after.id]
    # The dead relay's 10 s transaction timeout, plus up to 10 s until the broker's next look
    # for timed-out transactions (transaction.abort.timed.out.transaction.cleanup.interval.ms).
    assert stalled < 25, stalled


def test_explicit_commit_without_begin_is_refused(
    adapter: KafkaAdapter, unique: Callable[[str], str]
) -> None:
    with _transactional(adapter, unique("tx")) as publisher:
        with pytest.raises(PublishError):
            publisher.commit()
        with pytest.raises(PublishError):
            publisher.produce([Message("t", b"")])


def test_unreachable_broker_fails_fast_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    url = (
        "kafka://127.0.0.1:1?security.protocol=SASL_PLAINTEXT&sasl.mechanism=PLAIN"
        "&sasl.username=app&sasl.password=hunter2&connect_timeout=2&publish_timeout=2"
    )
    caplog.set_level(logging.DEBUG, logger="txmq")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        txmq.connect(url)
    assert time.monotonic() - started < 2 + 1
    assert "127.0.0.1:1" in str(caught.value)
    broker = txmq.connect(url, check=False)
    assert isinstance(broker, KafkaAdapter)
    started = time.monotonic()
    with (
        broker.publisher(identity="unreachable") as publisher,
        pytest.raises(BrokerUnavailable) as caught_publish,
    ):
        publisher.publish([Message("t", b"")])
    assert time.monotonic() - started < 2 + 1
    with broker.publisher() as publisher:
        [outcome] = publisher.publish([Message("t", b"")], timeout=1)
    assert not outcome.ok

    def poll_until_it_raises(subscription: Subscription) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert subscription.poll(0.5) == []

    with (
        broker.subscribe("g", ["t"]) as subscription,
        pytest.raises(BrokerUnavailable) as caught_poll,
    ):
        poll_until_it_raises(subscription)
    with pytest.raises(BrokerUnavailable) as caught_declare:
        broker.declare([Topology("g", "t")])
    texts = [str(caught.value), repr(caught.value), str(caught_publish.value), repr(broker)]
    texts += [str(outcome.error), str(caught_poll.value), str(caught_declare.value), caplog.text]
    assert all("hunter2" not in text for text in texts)


def test_outcomes_are_per_message_but_all_or_nothing_in_a_transaction(
    kafka_url: str, adapter: KafkaAdapter, declared: Declared, unique: Callable[[str], str]
) -> None:
    topology = declared()
    # Allowed by txmq's limit, refused by librdkafka's message.max.bytes (1 MB).
    broker = txmq.connect(with_option(kafka_url, "max_body_bytes=2000000"))
    assert isinstance(broker, KafkaAdapter)
    small, big, other = (
        Message(topology.topic, b"s"),
        Message(topology.topic, b"x" * 1_500_000),
        Message(topology.topic, b"o"),
    )
    try:
        with broker.publisher() as publisher:
            outcomes = publisher.publish([small, big, other])
        assert [o.ok for o in outcomes] == [True, False, True]
        assert isinstance(outcomes[1].error, PublishError)
        assert "MSG_SIZE_TOO_LARGE" in str(outcomes[1].error)
        with _transactional(broker, unique("tx")) as publisher:
            outcomes = publisher.publish([other, big])
            assert [o.ok for o in outcomes] == [False, False]
            assert all(isinstance(o.error, PublishError) for o in outcomes)
            assert publisher.publish([other])[0].ok  # the aborted batch left it usable
    finally:
        broker.close()
    listed = adapter.read_queue(topology.topic, limit=10, timeout=10)
    assert sorted(d.message.id for d in listed if d.message) == sorted(
        [small.id, other.id, other.id]
    )


def test_broker_refusals_fail_outcomes_and_abort_transactions(
    adapter: KafkaAdapter, unique: Callable[[str], str], cleanup: list[str]
) -> None:
    # The broker refuses record batches over the topic's max.message.bytes: this failure
    # comes back in delivery reports / at commit, not when producing.
    topic = unique("small-records")
    cleanup.append(topic)
    admin = AdminClient({"bootstrap.servers": ",".join(adapter.settings.bootstrap_servers)})
    created = admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": "400"})])
    created[topic].result(timeout=30)
    small, big = Message(topic, b"s"), Message(topic, b"x" * 2000)
    with adapter.publisher() as publisher:
        [refused] = publisher.publish([big])
        assert isinstance(refused.error, PublishError)
        assert "TOO_LARGE" in str(refused.error)
        assert publisher.publish([small])[0].ok
    with _transactional(adapter, unique("tx")) as publisher:
        outcomes = publisher.publish([small, big])
        assert [o.ok for o in outcomes] == [False, False]
        assert "aborted" in str(outcomes[0].error)
        assert publisher.publish([small])[0].ok
    listed = adapter.read_queue(topic, limit=10, timeout=10)
    assert [d.message.id for d in listed if d.message] == [small.id, small.id]
