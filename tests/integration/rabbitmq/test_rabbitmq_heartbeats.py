"""The RabbitMQ subscription's IO thread: a consumer keeps its connection through a handler
longer than the heartbeat timeout, and a lost connection is reported, never waited on
(real RabbitMQ, PostgreSQL)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select
from sqlalchemy.orm import Session

import txmq
from txmq import BrokerUnavailable, Delivery
from txmq.adapters import Topology
from txmq.adapters.base import Subscription
from txmq.adapters.rabbitmq.adapter import RabbitMQAdapter
from txmq.consumer import Consumer, make_inbox_table
from txmq.message import Message

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]

#: Seconds; RabbitMQ closes a connection it has heard nothing from for about this long.
HEARTBEAT = 2
#: How long the first handler blocks: three heartbeat timeouts.
LONG_HANDLER = 3 * HEARTBEAT


@pytest.fixture
def heartbeat_adapter(rabbitmq_url: str, proxy: Any) -> Iterator[RabbitMQAdapter]:
    """An adapter with ``?heartbeat=2`` whose connections go through ``proxy``, which
    counts them."""
    parts = urlsplit(rabbitmq_url)
    credentials, _, _ = parts.netloc.rpartition("@")
    host = f"127.0.0.1:{proxy.port}"
    netloc = f"{credentials}@{host}" if credentials else host
    query = "&".join([parts.query, f"heartbeat={HEARTBEAT}"]).strip("&")
    broker = txmq.connect(urlunsplit(parts._replace(netloc=netloc, query=query)))
    assert isinstance(broker, RabbitMQAdapter)
    yield broker
    broker.close()


@pytest.mark.parametrize("batch_size", [1, 5])
def test_a_handler_longer_than_the_heartbeat_timeout_is_not_redelivered(
    rabbitmq_url: str,
    database_url: str,
    heartbeat_adapter: RabbitMQAdapter,
    proxy: Any,
    cleanup: list[str],
    wait_until: Callable[..., None],
    batch_size: int,
) -> None:
    suffix = uuid.uuid4().hex[:10]
    metadata = MetaData()
    inbox = make_inbox_table(metadata, name=f"inbox_{suffix}")
    applied = Table(
        f"applied_{suffix}",
        metadata,
        Column("row", Integer, primary_key=True, autoincrement=True),
        Column("message_id", String(80), nullable=False),
    )
    engine = create_engine(database_url)
    metadata.create_all(engine)
    publisher_adapter = txmq.connect(rabbitmq_url)  # not through the proxy: not counted
    topology = Topology(f"g{suffix}", f"t{suffix}.evt")
    cleanup.extend([topology.work_queue, topology.dead_letter_queue])
    publisher_adapter.declare([topology])

    slow, marker = Message(topology.topic, b"slow"), Message(topology.topic, b"marker")
    runs: list[bytes] = []
    slow_started = threading.Event()
    consumer = Consumer(
        broker=heartbeat_adapter,
        engine=engine,
        group=topology.group,
        inbox=inbox,
        batch_size=batch_size,
        declare=False,
        poll_interval=0.2,
    )

    @consumer.handler(topology.topic)
    def handle(message: Message, session: Session) -> None:
        runs.append(message.body)
        if message.body == b"slow":
            slow_started.set()
            # The work itself: a handler that takes three heartbeat timeouts.
            threading.Event().wait(LONG_HANDLER)
        session.execute(applied.insert().values(message_id=message.id))

    def applied_ids() -> list[str]:
        with engine.connect() as connection:
            return list(connection.execute(select(applied.c.message_id)).scalars())

    try:
        with publisher_adapter.publisher() as publisher:
            assert all(o.ok for o in publisher.publish([slow]))
            opened = proxy.connections  # txmq.connect's ping was one
            consumer.start()
            wait_until(slow_started.is_set, 30)
            wait_until(lambda: consumer.stats.processed == 1, LONG_HANDLER + 30)
            # Had the connection dropped during the handler, the slow message would have
            # gone back to the head of the queue, ahead of the marker.
            assert all(o.ok for o in publisher.publish([marker]))
        wait_until(lambda: consumer.stats.processed == 2, 30)
        stats = consumer.stats
    finally:
        consumer.stop()
        publisher_adapter.close()
    try:
        assert runs == [b"slow", b"marker"]
        assert sorted(applied_ids()) == sorted([slow.id, marker.id])
        assert stats.duplicates == 0
        # The consumer's one connection stayed open throughout.
        assert proxy.connections == opened + 1
    finally:
        metadata.drop_all(engine)
        engine.dispose()


def _poll_until_unavailable(subscription: Subscription, timeout: float) -> BrokerUnavailable:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            subscription.poll(0.2)
        except BrokerUnavailable as exc:
            return exc
    raise AssertionError(f"poll did not raise BrokerUnavailable within {timeout} s")


def test_a_broker_gone_silent_surfaces_from_poll_and_ack_and_close_returns(
    adapter: RabbitMQAdapter,
    heartbeat_adapter: RabbitMQAdapter,
    declared: Callable[..., Topology],
    proxy: Any,
) -> None:
    topology = declared()
    with adapter.publisher() as publisher:
        assert all(o.ok for o in publisher.publish([Message(topology.topic, b"held")]))
    subscription = heartbeat_adapter.subscribe(topology.group, [topology.work_queue])
    try:
        deliveries: list[Delivery] = []
        deadline = time.monotonic() + 10
        while not deliveries:
            assert time.monotonic() < deadline, "the message did not arrive"
            deliveries = subscription.poll(0.2)
        # Nothing comes back from the broker any more, heartbeats included; the connection
        # stays up as far as TCP can tell.
        proxy.hold_downstream()
        _poll_until_unavailable(subscription, 10 * HEARTBEAT)
        with pytest.raises(BrokerUnavailable):
            subscription.ack(deliveries)
        started = time.monotonic()
        subscription.close()
        bound = heartbeat_adapter.settings.common.connect_timeout + 2
        assert time.monotonic() - started < bound
    finally:
        proxy.resume_downstream()
        subscription.close()
    with adapter.subscribe(topology.group, [topology.work_queue]) as survivor:
        again: list[Delivery] = []
        deadline = time.monotonic() + 10
        while not again:
            assert time.monotonic() < deadline, "the message was not redelivered"
            again = survivor.poll(0.2)
        survivor.ack(again)
    assert again[0].redelivered


def test_ack_after_the_socket_died_raises_broker_unavailable(
    adapter: RabbitMQAdapter,
    heartbeat_adapter: RabbitMQAdapter,
    declared: Callable[..., Topology],
    proxy: Any,
) -> None:
    topology = declared()
    with adapter.publisher() as publisher:
        assert all(o.ok for o in publisher.publish([Message(topology.topic, b"cut")]))
    with heartbeat_adapter.subscribe(topology.group, [topology.work_queue]) as subscription:
        deliveries: list[Delivery] = []
        deadline = time.monotonic() + 10
        while not deliveries:
            assert time.monotonic() < deadline, "the message did not arrive"
            deliveries = subscription.poll(0.2)
        proxy.sever()
        _poll_until_unavailable(subscription, 10)
        with pytest.raises(BrokerUnavailable):
            subscription.ack(deliveries)
        with pytest.raises(BrokerUnavailable):
            subscription.release(deliveries)
