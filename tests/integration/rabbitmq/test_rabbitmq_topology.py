"""RabbitMQ topology against a real broker: idempotent declare, conflicts, quorum queues."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import txmq
from txmq import Message, Topology, TopologyError
from txmq.adapters.rabbitmq.adapter import RabbitMQAdapter

pytestmark = pytest.mark.broker


def test_declare_is_idempotent_and_creates_every_queue(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology], depth: Callable[[str], int]
) -> None:
    topology = declared(retry_delays=(0.5, 5.0))
    adapter.declare([topology, topology])
    queues = [topology.work_queue, *topology.retry_queues(), topology.dead_letter_queue]
    assert queues == [
        f"{topology.group}.{topology.topic}",
        f"{topology.group}.{topology.topic}.retry.1",
        f"{topology.group}.{topology.topic}.retry.2",
        f"{topology.group}.{topology.topic}.dlq",
    ]
    assert [depth(q) for q in queues] == [0, 0, 0, 0]


def test_conflicting_redeclare_is_a_topology_error_and_the_adapter_recovers(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology]
) -> None:
    topology = declared(retry_delays=(1.0,))
    changed = Topology(topology.group, topology.topic, retry_delays=(2.0,))
    with pytest.raises(TopologyError, match="PRECONDITION_FAILED") as caught:
        adapter.declare([changed])
    assert topology.retry_queues()[0] in str(caught.value)
    adapter.declare([topology])
    with adapter.publisher() as publisher:
        assert publisher.publish([Message(topology.topic, b"")])[0].ok


@pytest.fixture
def quorum(
    connect_with: Callable[..., RabbitMQAdapter], raw_channel: Any, unique: Callable[[str], str]
) -> Iterator[RabbitMQAdapter]:
    """An adapter declaring quorum queues, on an exchange of its own: the shared broker's
    default exchange holds unroutable messages in a classic queue."""
    exchange = unique("quorum")
    adapter = connect_with(queue_type="quorum", exchange=exchange)
    yield adapter
    adapter.close()
    raw_channel.queue_delete(f"{exchange}.unroutable")
    raw_channel.exchange_delete(f"{exchange}.unroutable")
    raw_channel.exchange_delete(exchange)


def test_queue_type_conflict_is_a_topology_error(
    quorum: RabbitMQAdapter, declared: Callable[..., Topology]
) -> None:
    topology = declared()
    with pytest.raises(TopologyError, match="x-queue-type"):
        quorum.declare([topology])


def test_quorum_deployments_hold_unroutable_messages_in_a_quorum_queue(
    quorum: RabbitMQAdapter, raw_channel: Any, connect_with: Callable[..., RabbitMQAdapter]
) -> None:
    """A classic holding queue lives on one node: in a cluster, that node down would stop
    every publisher of the deployment (each declares the holding queue)."""
    with quorum.publisher() as publisher:
        assert publisher.publish([Message("nobody-bound", b"held")])[0].ok
    holding = f"{quorum.settings.exchange}.unroutable"
    assert quorum.queue_depth(holding) == 1
    # A classic deployment on the same exchange is refused, saying what to do.
    classic = connect_with(exchange=quorum.settings.exchange)
    with classic.publisher() as publisher, pytest.raises(TopologyError, match="own exchange"):
        publisher.publish([Message("nobody-bound", b"")])
    with pytest.raises(TopologyError, match="own exchange"):
        classic.declare([])
    classic.close()


def test_publisher_refuses_an_exchange_of_another_type(
    connect_with: Callable[..., RabbitMQAdapter], raw_channel: Any, unique: Callable[[str], str]
) -> None:
    exchange = unique("direct-exchange")
    raw_channel.exchange_declare(exchange, exchange_type="direct")
    try:
        broker = connect_with(exchange=exchange)
        with (
            broker.publisher() as publisher,
            pytest.raises(TopologyError, match="not a durable topic exchange"),
        ):
            publisher.publish([Message("t", b"")])
    finally:
        raw_channel.exchange_delete(exchange)


def test_quorum_queues_carry_messages_and_retries(
    quorum: RabbitMQAdapter, declared: Callable[..., Topology]
) -> None:
    topology = declared(retry_delays=(0.5,), broker=quorum)
    # A quorum queue refuses a classic redeclare; declaring as quorum again is fine.
    quorum.declare([topology])
    first, retried = Message(topology.topic, b"1"), Message(topology.topic, b"2")
    with quorum.publisher() as publisher:
        assert publisher.publish([first])[0].ok
        sent_at = time.monotonic()
        assert publisher.send_to_queue(topology.retry_queues()[0], [retried])[0].ok
    got = []
    with quorum.subscribe(topology.group, quorum.sources_for([topology])) as subscription:
        deadline = time.monotonic() + 10
        while len(got) < 2:
            assert time.monotonic() < deadline
            batch = subscription.poll(0.2)
            subscription.ack(batch)
            got += [d.message for d in batch]
    assert got == [first, retried]
    assert time.monotonic() - sent_at >= 0.45


def test_ping_and_connect_check(rabbitmq_url: str) -> None:
    broker = txmq.connect(rabbitmq_url, check=True)
    broker.ping()
    assert broker.system == "rabbitmq"
    broker.close()
    broker.close()


def test_a_url_with_several_hosts_fails_over_past_a_dead_node(
    rabbitmq_url: str, declared: Callable[..., Topology]
) -> None:
    """The nodes of a cluster in one URL: a node that refuses connections is passed over by
    declare, the publisher and the subscription alike."""
    with socket.socket() as reserved:
        # Bound and not listening: connecting to it is refused, like a node that is down.
        reserved.bind(("127.0.0.1", 0))
        dead = reserved.getsockname()[1]
        parts = urlsplit(rabbitmq_url)
        userinfo, _, live = parts.netloc.rpartition("@")
        url = urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{dead},{live}"))
        broker = txmq.connect(url)
        assert isinstance(broker, RabbitMQAdapter)
        topology = declared(broker=broker)
        message = Message(topology.topic, b"via the second node")
        with broker.publisher() as publisher:
            assert publisher.publish([message])[0].ok
        with broker.subscribe(topology.group, broker.sources_for([topology])) as subscription:
            deadline = time.monotonic() + 10
            got: list[Message] = []
            while not got:
                assert time.monotonic() < deadline
                batch = subscription.poll(0.2)
                subscription.ack(batch)
                got += [d.message for d in batch]
        broker.close()
    assert got == [message]
