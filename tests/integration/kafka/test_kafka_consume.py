"""Consuming from a real Kafka: groups, per-message offsets, redelivery, pause, inspection."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

import txmq
from txmq.adapters.base import Topology
from txmq.adapters.kafka.adapter import KafkaAdapter, KafkaSubscription
from txmq.errors import BrokerUnavailable, MessageDecodeError, QueueNotFound, TopologyError
from txmq.message import Message
from txmq.wire import HEADER_DUE_AT, HEADER_TARGET_GROUP, Delivery

pytestmark = pytest.mark.broker

Declared = Callable[..., Topology]
Drain = Callable[..., list[Delivery]]
WaitUntil = Callable[..., None]


def _publish(adapter: KafkaAdapter, messages: list[Message]) -> None:
    with adapter.publisher() as publisher:
        outcomes = publisher.publish(messages)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok][:3]


def _ids(deliveries: list[Delivery]) -> list[str]:
    return [d.message.id for d in deliveries if d.message is not None]


def _subscribe(adapter: KafkaAdapter, group: str, sources: list[str]) -> KafkaSubscription:
    subscription = adapter.subscribe(group, sources)
    assert isinstance(subscription, KafkaSubscription)
    return subscription


def test_unacked_deliveries_go_to_the_next_consumer(
    adapter: KafkaAdapter, declared: Declared, drain: Drain
) -> None:
    topology = declared()
    sent = [Message(topology.topic, b"%d" % i, key=f"k{i % 4}") for i in range(20)]
    _publish(adapter, sent)
    with adapter.subscribe(topology.group, [topology.topic]) as first:
        assert sorted(_ids(drain(first, 20, ack=False))) == sorted(m.id for m in sent)
    with adapter.subscribe(topology.group, [topology.topic]) as second:
        assert sorted(_ids(drain(second, 20))) == sorted(m.id for m in sent)


def test_commit_stops_at_the_oldest_unacked_offset(
    adapter: KafkaAdapter,
    declared: Declared,
    drain: Drain,
    wait_until: WaitUntil,
    committed_offsets: Callable[[str, str], dict[int, int]],
) -> None:
    topology = declared()
    # One key: one partition, offsets 0..5 in order.
    sent = [Message(topology.topic, b"%d" % i, key="one") for i in range(6)]
    _publish(adapter, sent)
    with _subscribe(adapter, topology.group, [topology.topic]) as subscription:
        got = drain(subscription, 6, ack=False)
        assert _ids(got) == [m.id for m in sent]
        partition = got[0].token.partition
        assert [d.token.offset for d in got] == list(range(6))
        subscription.ack([got[0], *got[2:]])  # offset 1 is still being worked on
        # Committed asynchronously: it lands without another call, and never beyond 1.
        wait_until(lambda: committed_offsets(topology.group, topology.topic) == {partition: 1})
        subscription.poll(0.2)
        assert committed_offsets(topology.group, topology.topic) == {partition: 1}
    # The next member of the group starts at the unfinished offset 1.
    with adapter.subscribe(topology.group, [topology.topic]) as successor:
        again = drain(successor, 5)
    assert _ids(again) == [m.id for m in sent[1:]]
    assert committed_offsets(topology.group, topology.topic) == {partition: 6}


def test_two_consumers_of_one_group_share_partitions(
    adapter: KafkaAdapter, declared: Declared, wait_until: WaitUntil
) -> None:
    topology = declared()
    members = [_subscribe(adapter, topology.group, [topology.topic]) for _ in range(2)]
    received: list[list[Delivery]] = [[], []]

    def poll_all() -> None:
        for member, got in zip(members, received, strict=True):
            batch = member.poll(0.2)
            member.ack(batch)
            got.extend(batch)

    def shared() -> bool:
        poll_all()
        owned = [member.assignment() for member in members]
        return all(owned) and sorted(owned[0] + owned[1]) == [
            (topology.topic, p) for p in range(adapter.settings.partitions)
        ]

    try:
        wait_until(shared, timeout=60)
        sent = [Message(topology.topic, b"%d" % i, key=f"k{i}") for i in range(60)]
        _publish(adapter, sent)
        wait_until(lambda: (poll_all(), sum(map(len, received)) >= len(sent))[1], timeout=30)
    finally:
        for member in members:
            member.close()
    assert sorted(_ids(received[0] + received[1])) == sorted(m.id for m in sent)
    assert received[0]
    assert received[1]
    partitions = [{d.token.partition for d in got} for got in received]
    assert not partitions[0] & partitions[1]


def test_each_group_gets_every_message(
    adapter: KafkaAdapter, declared: Declared, unique: Callable[[str], str], drain: Drain
) -> None:
    topology = declared()
    sent = [Message(topology.topic, b"%d" % i, key=f"k{i % 3}") for i in range(30)]
    _publish(adapter, sent)
    for group in (topology.group, unique("other")):
        with adapter.subscribe(group, [topology.topic]) as subscription:
            assert sorted(_ids(drain(subscription, 30))) == sorted(m.id for m in sent)


def test_undecodable_records_arrive_with_their_error(
    adapter: KafkaAdapter, declared: Declared, drain: Drain, raw_producer: Producer
) -> None:
    topology = declared()
    raw_producer.produce(topology.topic, b"not txmq", key=b"k", headers=[("foo", b"bar")])
    raw_producer.produce(
        topology.topic, b"bad header", key=b"k", headers=[("x-txmq-id", b"id-1"), ("h", b"\xff")]
    )
    assert raw_producer.flush(10) == 0
    good = Message(topology.topic, b"good", key="k")
    _publish(adapter, [good])
    with adapter.subscribe(topology.group, [topology.topic]) as subscription:
        got = drain(subscription, 3)
    decoded = [d.message for d in got if d.message is not None]
    assert decoded == [good]
    broken = sorted((d for d in got if d.message is None), key=lambda d: d.raw_body)
    assert [d.raw_body for d in broken] == [b"bad header", b"not txmq"]
    assert all(isinstance(d.decode_error, MessageDecodeError) for d in broken)
    assert broken[0].raw_headers["x-txmq-id"] == "id-1"
    assert broken[1].raw_headers == {"foo": "bar"}


def test_released_deliveries_come_again(
    adapter: KafkaAdapter,
    declared: Declared,
    drain: Drain,
    committed_offsets: Callable[[str, str], dict[int, int]],
) -> None:
    topology = declared()
    sent = [Message(topology.topic, b"%d" % i, key="one") for i in range(3)]
    _publish(adapter, sent)
    with adapter.subscribe(topology.group, [topology.topic]) as subscription:
        first = drain(subscription, 3, ack=False)
        subscription.ack(first[:1])
        subscription.release(first[1:2])
        again = drain(subscription, 2)
    assert _ids(again) == [m.id for m in sent[1:]]
    assert all(d.redelivered for d in again)
    assert committed_offsets(topology.group, topology.topic) == {first[0].token.partition: 3}


def test_paused_topics_are_not_fetched_until_resumed(
    adapter: KafkaAdapter, declared: Declared, drain: Drain
) -> None:
    topology = declared(retry_delays=(1.0,))
    retry_topic = topology.retry_queues()[0]
    waiting = Message(topology.topic, b"retry me", key="r")
    with (
        adapter.publisher() as publisher,
        adapter.subscribe(topology.group, adapter.sources_for([topology])) as subscription,
    ):
        # Paused before any partition is assigned: applies when they are.
        subscription.pause([retry_topic])
        assert publisher.send_to_queue(retry_topic, [waiting])[0].ok
        fresh = Message(topology.topic, b"fresh")
        assert publisher.publish([fresh])[0].ok
        got = drain(subscription, 1)
        got += subscription.poll(1.0)
        assert _ids(got) == [fresh.id]
        subscription.resume([retry_topic])
        [retried] = drain(subscription, 1, ack=False)
        assert retried.message == waiting
        assert retried.source == retry_topic
        # Not due yet: give it back and stop fetching the retry topic.
        subscription.release([retried])
        subscription.pause([retry_topic])
        later = Message(topology.topic, b"later")
        assert publisher.publish([later])[0].ok
        got = drain(subscription, 1)
        got += subscription.poll(1.0)
        assert _ids(got) == [later.id]
        subscription.resume([retry_topic])
        [again] = drain(subscription, 1)
    assert again.message == waiting
    assert again.redelivered


def test_read_queue_leaves_records_and_purge_removes_them(
    adapter: KafkaAdapter, declared: Declared, unique: Callable[[str], str]
) -> None:
    topology = declared()
    dlq = topology.dead_letter_queue
    dead = [Message(topology.topic, b"%d" % i, key=f"k{i}") for i in range(5)]
    with adapter.publisher() as publisher:
        assert all(o.ok for o in publisher.send_to_queue(dlq, dead))
    assert len(adapter.read_queue(dlq, limit=3, timeout=10)) == 3
    for _ in range(2):
        listed = adapter.read_queue(dlq, limit=100, timeout=10)
        assert sorted(_ids(listed)) == sorted(m.id for m in dead)
        assert all(
            d.source == dlq and d.message and d.message.topic == topology.topic for d in listed
        )
    assert adapter.purge_queue(dlq) == 5
    assert adapter.read_queue(dlq, limit=100, timeout=10) == []
    assert adapter.purge_queue(dlq) == 0
    missing = unique("never-declared")
    with pytest.raises(QueueNotFound):
        adapter.purge_queue(missing)
    with pytest.raises(QueueNotFound):
        adapter.read_queue(missing, limit=10, timeout=5)
    admin = AdminClient({"bootstrap.servers": ",".join(adapter.settings.bootstrap_servers)})
    assert missing not in admin.list_topics(timeout=10).topics  # not created as a side effect


def test_declare_creates_retry_and_dead_letter_topics(
    adapter: KafkaAdapter, declared: Declared
) -> None:
    topology = declared(retry_delays=(1.0, 5.0))
    adapter.declare([topology])  # again: nothing changes, nothing fails
    admin = AdminClient({"bootstrap.servers": ",".join(adapter.settings.bootstrap_servers)})
    topics = admin.list_topics(timeout=10).topics
    for name in (topology.topic, *topology.retry_queues(), topology.dead_letter_queue):
        assert len(topics[name].partitions) == adapter.settings.partitions
    assert adapter.sources_for([topology]) == [topology.topic, *topology.retry_queues()]


def test_impossible_topic_is_a_topology_error(kafka_url: str, unique: Callable[[str], str]) -> None:
    option = ("&" if "?" in kafka_url else "?") + "replication_factor=3"
    broker = txmq.connect(kafka_url + option)
    try:
        with pytest.raises(TopologyError, match="REPLICATION_FACTOR"):
            broker.declare([Topology(unique("g"), unique("t"))])
    finally:
        broker.close()


def test_closed_subscription_refuses_to_poll(adapter: KafkaAdapter, declared: Declared) -> None:
    topology = declared()
    subscription = adapter.subscribe(topology.group, [topology.topic])
    subscription.close()
    subscription.close()
    with pytest.raises(BrokerUnavailable):
        subscription.poll(0.1)


def test_the_subscription_withholds_retries_not_due_and_drops_other_groups_replays(
    adapter: KafkaAdapter,
    declared: Declared,
    drain: Drain,
    wait_until: WaitUntil,
    committed_offsets: Callable[[str, str], dict[int, int]],
) -> None:
    """What the consumer worker no longer does: the Kafka subscription itself gives back a
    retry that is not due (pausing its retry topic) and acknowledges a DLQ replay sent to
    the shared topic for another group; ``withheld()`` counts both."""
    topology = declared(retry_delays=(1.0,))
    retry_topic = topology.retry_queues()[0]
    not_due = Message(topology.topic, b"later", headers={HEADER_DUE_AT: f"{time.time() + 3600}"})
    # One key, one partition: offsets 0-2.
    theirs = Message(topology.topic, b"theirs", key="k", headers={HEADER_TARGET_GROUP: "another"})
    ours = Message(topology.topic, b"ours", key="k", headers={HEADER_TARGET_GROUP: topology.group})
    fresh = Message(topology.topic, b"fresh", key="k")
    with adapter.publisher() as publisher:
        assert publisher.send_to_queue(retry_topic, [not_due])[0].ok
    _publish(adapter, [theirs, ours, fresh])
    held = skipped = 0
    with _subscribe(adapter, topology.group, adapter.sources_for([topology])) as subscription:
        got = drain(subscription, 2)

        def counted() -> bool:
            nonlocal held, skipped
            got.extend(subscription.poll(0.2))
            withheld = subscription.withheld()
            held, skipped = held + withheld.held, skipped + withheld.skipped
            return held >= 1 and skipped == 1

        wait_until(counted)
    assert sorted(_ids(got)) == sorted([ours.id, fresh.id])
    # The other group's replay was acknowledged: the commit made at close passes it.
    assert list(committed_offsets(topology.group, topology.topic).values()) == [3]
    assert committed_offsets(topology.group, retry_topic) == {}
