"""A Kafka member that librdkafka stops serving is not left idling (real broker).

The wedge is made the way it shows: librdkafka stops fetching a partition behind txmq's
back (here by pausing it on the underlying client, which txmq's own ``pause`` would have
recorded). A member with nothing to read, behind an open transaction, or paused on
purpose is never taken for a wedged one.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Producer
from sqlalchemy import MetaData, create_engine
from sqlalchemy.orm import Session

import txmq
from txmq.adapters.base import Subscription, Topology
from txmq.adapters.kafka.adapter import KafkaAdapter, KafkaSubscription
from txmq.consumer import Consumer, make_inbox_table
from txmq.errors import BrokerUnavailable
from txmq.message import Message
from txmq.testing import wait_for
from txmq.wire import Delivery

pytestmark = pytest.mark.broker

STALL = 1.5

Declared = Callable[..., Topology]
Drain = Callable[..., list[Delivery]]


@pytest.fixture
def quick(kafka_url: str) -> Iterator[KafkaAdapter]:
    """An adapter whose consumers count as wedged after 1.5 s of quiet with a backlog."""
    broker = txmq.connect(kafka_url + ("&" if "?" in kafka_url else "?") + f"stall_timeout={STALL}")
    assert isinstance(broker, KafkaAdapter)
    yield broker
    broker.close()


def _publish(adapter: KafkaAdapter, topic: str, count: int) -> list[str]:
    messages = [Message(topic, b"%d" % i, key=f"k{i}") for i in range(count)]
    with adapter.publisher() as publisher:
        assert all(o.ok for o in publisher.publish(messages))
    return [m.id for m in messages]


def _ids(deliveries: list[Delivery]) -> list[str]:
    return [d.message.id for d in deliveries if d.message is not None]


def _quiet_for(subscription: KafkaSubscription, seconds: float) -> list[Delivery]:
    """Poll for ``seconds``; what came (a wedge verdict would raise)."""
    got: list[Delivery] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got.extend(subscription.poll(0.2))
    return got


def _subscribe(adapter: KafkaAdapter, topology: Topology) -> KafkaSubscription:
    subscription = adapter.subscribe(topology.group, [topology.topic])
    assert isinstance(subscription, KafkaSubscription)
    return subscription


def test_a_member_whose_fetcher_stopped_says_so_and_a_new_one_delivers(
    quick: KafkaAdapter, declared: Declared, drain: Drain
) -> None:
    topology = declared()
    first = _publish(quick, topology.topic, 6)
    with _subscribe(quick, topology) as wedged:
        assert sorted(_ids(drain(wedged, 6))) == sorted(first)
        client = wedged._consumer
        client.pause(client.assignment())  # librdkafka stops fetching, txmq not told
        later = _publish(quick, topology.topic, 6)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="wedged") as raised:
            _quiet_for(wedged, 10 * STALL)
        took = time.monotonic() - started
    assert f"{topology.topic}[" in str(raised.value)
    assert took <= 2 * STALL + 2, took  # two looks, half the quiet period apart
    with _subscribe(quick, topology) as successor:
        assert sorted(_ids(drain(successor, 6))) == sorted(later)


def test_nothing_to_read_an_open_transaction_and_a_pause_are_not_a_wedge(
    quick: KafkaAdapter, declared: Declared, drain: Drain, kafka_url: str
) -> None:
    topology = declared()
    _publish(quick, topology.topic, 3)
    with _subscribe(quick, topology) as subscription:
        drain(subscription, 3)
        assert _quiet_for(subscription, 3 * STALL) == []  # nothing to read

        # Records of a transaction still open sit past the member's position, unreadable.
        bootstrap = kafka_url.split("://", 1)[1].split("?", 1)[0]
        open_tx = Producer(
            {"bootstrap.servers": bootstrap, "transactional.id": f"open-{uuid.uuid4().hex}"}
        )
        open_tx.init_transactions(15)
        open_tx.begin_transaction()
        for partition in range(3):
            open_tx.produce(topology.topic, b"open", partition=partition)
        open_tx.flush(10)
        assert _quiet_for(subscription, 3 * STALL) == []
        open_tx.abort_transaction(15)

        # A backlog on a topic paused on purpose.
        subscription.pause([topology.topic])
        backlog = _publish(quick, topology.topic, 3)
        assert _quiet_for(subscription, 3 * STALL) == []
        subscription.resume([topology.topic])
        assert sorted(_ids(drain(subscription, 3))) == sorted(backlog)


def test_a_member_that_gives_partitions_to_a_newcomer_is_not_left_waiting(
    quick: KafkaAdapter, declared: Declared, drain: Drain
) -> None:
    topology = declared()
    with _subscribe(quick, topology) as first:
        _publish(quick, topology.topic, 6)
        drain(first, 6)
        with _subscribe(quick, topology) as second:
            deadline = time.monotonic() + 30
            while not (first.assignment() and second.assignment()):
                assert time.monotonic() < deadline, "the group never split the partitions"
                first.poll(0.2)
                second.poll(0.2)
            # The revocation was followed by an assignment callback: the watch is not left
            # waiting for one (it would call the member wedged after the rebalance bound).
            assert first._watch.waited_too_long(time.monotonic() + 10_000) is None
            assert second._watch.waited_too_long(time.monotonic() + 10_000) is None
            later = _publish(quick, topology.topic, 12)
            got: list[Delivery] = []
            deadline = time.monotonic() + 30
            while len(got) < 12:
                assert time.monotonic() < deadline, f"got {len(got)} of 12"
                for member in (first, second):
                    batch = member.poll(0.2)
                    member.ack(batch)
                    got.extend(batch)
            assert sorted(_ids(got)) == sorted(later)


@pytest.mark.database
def test_a_consumer_rebuilds_its_wedged_member_by_itself_and_goes_on(
    quick: KafkaAdapter, declared: Declared, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology = declared()
    opened: list[KafkaSubscription] = []
    subscribe = quick.subscribe

    def recorded(*args: object, **kwargs: object) -> Subscription:
        subscription = subscribe(*args, **kwargs)  # type: ignore[arg-type]
        assert isinstance(subscription, KafkaSubscription)
        opened.append(subscription)
        return subscription

    monkeypatch.setattr(quick, "subscribe", recorded)
    metadata = MetaData()
    inbox = make_inbox_table(metadata, name=f"inbox_{uuid.uuid4().hex[:10]}")
    engine = create_engine(database_url)
    metadata.create_all(engine)
    seen: list[str] = []
    wedge = threading.Event()

    def handle(message: Message, session: Session) -> None:
        seen.append(message.id)
        if wedge.is_set():
            # In the worker's own thread, as librdkafka is used in production: a call
            # from another thread while the worker polls has been seen to hang both.
            wedge.clear()
            client = opened[-1]._consumer
            client.pause(client.assignment())  # librdkafka stops fetching, txmq not told

    consumer = Consumer(
        broker=quick, engine=engine, group=topology.group, inbox=inbox, poll_interval=0.2
    )
    consumer.add_handler(topology.topic, handle)
    try:
        consumer.start()
        wedge.set()
        first = _publish(quick, topology.topic, 1)
        wait_for(lambda: set(first) <= set(seen), timeout=30, what="the first message")
        assert len(opened) == 1
        later = _publish(quick, topology.topic, 3)
        wait_for(lambda: set(later) <= set(seen), timeout=30, what="the later messages")
        assert len(opened) >= 2  # a new member delivered them
        assert sorted(seen) == sorted(first + later)
    finally:
        consumer.stop()
        metadata.drop_all(engine)
        engine.dispose()
