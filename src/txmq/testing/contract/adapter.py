"""The adapter contract, written once and run on every adapter (memory, RabbitMQ, Kafka).

Application code that works on one broker works on the other by changing the URL only: these
scenarios are that promise, checked.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid

import pytest

import txmq
from txmq.adapters.base import Subscription
from txmq.testing.contract.features import requires
from txmq.wire import Delivery

pytestmark = pytest.mark.broker


@pytest.fixture
def topic() -> str:
    return f"contract.{uuid.uuid4().hex[:10]}"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def publish(broker: txmq.Adapter, messages: list[txmq.Message]) -> None:
    with broker.publisher() as publisher:
        outcomes = publisher.publish(messages)
    failed = [o for o in outcomes if not o.ok]
    assert not failed, failed[0].error


def drain(
    subscriptions: list[Subscription], count: int, *, timeout: float = 30.0, ack: bool = True
) -> list[list[Delivery]]:
    """Poll every subscription in turn until ``count`` deliveries arrived in total."""
    got: list[list[Delivery]] = [[] for _ in subscriptions]
    deadline = time.monotonic() + timeout
    while sum(map(len, got)) < count and time.monotonic() < deadline:
        for i, subscription in enumerate(subscriptions):
            deliveries = subscription.poll(0.2)
            got[i].extend(deliveries)
            if ack:
                subscription.ack(deliveries)
    return got


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.message.id for d in deliveries if d.message is not None]


def test_publish_n_consume_n_with_manual_ack(broker: txmq.Adapter, topic: str) -> None:
    group = unique("g")
    broker.declare([txmq.Topology(group, topic)])
    sent = [
        txmq.Message(topic, f"body {i}".encode(), headers={"n": str(i)}, key=f"k{i % 4}")
        for i in range(500)
    ]
    publish(broker, sent)
    sources = broker.sources_for([txmq.Topology(group, topic)])
    with broker.subscribe(group, sources, prefetch=100) as subscription:
        (got,) = drain([subscription], len(sent))
    assert sorted(ids(got)) == sorted(m.id for m in sent)
    by_id = {m.id: m for m in sent}
    for delivery in got:
        assert delivery.message is not None
        original = by_id[delivery.message.id]
        assert delivery.message.body == original.body
        assert delivery.message.key == original.key
        assert delivery.message.topic == topic
        assert delivery.message.application_headers() == dict(original.headers)
        assert delivery.attempt == 1
    # Acked: a new subscription of the group gets nothing more.
    with broker.subscribe(group, sources) as subscription:
        assert drain([subscription], 1, timeout=2.0) == [[]]


@requires("across_processes")
def test_unacked_messages_are_redelivered_when_the_consumer_dies(
    broker: txmq.Adapter, broker_url: str, topic: str
) -> None:
    group = unique("g")
    topology = txmq.Topology(group, topic)
    broker.declare([topology])
    sent = [txmq.Message(topic, f"{i}".encode()) for i in range(20)]
    publish(broker, sent)
    sources = broker.sources_for([topology])
    script = textwrap.dedent(
        f"""
        import os, signal, time
        import txmq
        broker = txmq.connect({broker_url!r})
        subscription = broker.subscribe({group!r}, {sources!r})
        got, deadline = 0, time.monotonic() + 60
        while got < 20 and time.monotonic() < deadline:
            got += len(subscription.poll(0.5))   # received, never acked
        print(got, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == -9, done.stderr
    assert done.stdout.strip() == "20"
    with broker.subscribe(group, sources) as subscription:
        (got,) = drain([subscription], 20, timeout=60)
    assert sorted(ids(got)) == sorted(m.id for m in sent)


def test_consumers_of_one_group_share_and_groups_each_get_all(
    broker: txmq.Adapter, topic: str
) -> None:
    shared, other = unique("shared"), unique("other")
    topologies = [txmq.Topology(shared, topic), txmq.Topology(other, topic)]
    broker.declare(topologies)
    shared_sources = broker.sources_for([topologies[0]])
    first = broker.subscribe(shared, shared_sources, prefetch=10)
    second = broker.subscribe(shared, shared_sources, prefetch=10)
    sent: list[txmq.Message] = []
    got_first: list[Delivery] = []
    got_second: list[Delivery] = []
    try:
        # Published in rounds until both members have had some: a Kafka member gets
        # partitions only once a rebalance has assigned it some, which on a loaded machine
        # may come after a whole round went to the other member.
        deadline = time.monotonic() + 60
        while not (got_first and got_second) and time.monotonic() < deadline:
            batch = [txmq.Message(topic, b"x", key=f"k{i % 16}") for i in range(100)]
            publish(broker, batch)
            sent += batch
            left = len(sent) - len(got_first) - len(got_second)
            more_first, more_second = drain([first, second], left, timeout=60)
            got_first += more_first
            got_second += more_second
    finally:
        first.close()
        second.close()
    assert sorted(ids(got_first) + ids(got_second)) == sorted(m.id for m in sent)
    assert got_first, "the first consumer got nothing within 60 s: not competing consumers"
    assert got_second, "the second consumer got nothing within 60 s: not competing consumers"
    with broker.subscribe(other, broker.sources_for([topologies[1]])) as subscription:
        (got_other,) = drain([subscription], len(sent))
    assert sorted(ids(got_other)) == sorted(m.id for m in sent)


def test_per_key_order_holds(broker: txmq.Adapter, topic: str) -> None:
    group = unique("g")
    broker.declare([txmq.Topology(group, topic)])
    sent = [txmq.Message(topic, str(i).encode(), key=f"key-{i % 5}") for i in range(300)]
    publish(broker, sent)
    with broker.subscribe(group, broker.sources_for([txmq.Topology(group, topic)])) as sub:
        (got,) = drain([sub], len(sent))
    for key in {m.key for m in sent}:
        expected = [m.id for m in sent if m.key == key]
        assert [d.message.id for d in got if d.message and d.message.key == key] == expected
