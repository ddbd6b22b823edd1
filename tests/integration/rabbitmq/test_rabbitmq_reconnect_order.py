"""A subscription closed while its connection hangs: the next one to its queue waits, so
the messages the hung connection still holds are not overtaken (real RabbitMQ).

Seen in the chaos run: after a broker partition, a consumer's close timed out while the
old connection, still open at the broker, held a block of messages unacknowledged; the
consumer subscribed again, got the messages published after that block first, and the
block came back only when the broker restarted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from txmq import BrokerUnavailable, Delivery, Message
from txmq.adapters.base import Subscription, Topology
from txmq.adapters.rabbitmq.adapter import RabbitMQAdapter

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _poll(subscription: Subscription, count: int, timeout: float = 10) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"{len(got)} of {count} messages arrived"
        got += subscription.poll(0.2)
    return got


def test_a_queue_is_not_consumed_again_while_a_hung_subscription_to_it_still_closes(
    adapter: RabbitMQAdapter,
    proxied_adapter: RabbitMQAdapter,
    declared: Callable[..., Topology],
    proxy: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topology = declared()
    other = declared()
    with adapter.publisher() as publisher:
        sent = publisher.publish([Message(topology.topic, b"m%d" % n, key="k") for n in (0, 1)])
        assert all(outcome.ok for outcome in sent)
    hung = proxied_adapter.subscribe(topology.group, [topology.work_queue], prefetch=10)
    try:
        held = _poll(hung, 2)
        # The connection stays open at both ends, and nothing gets through on it any more:
        # closing it cannot finish, and the broker keeps its two messages unacknowledged.
        proxy.freeze()
        with caplog.at_level(logging.WARNING, logger="txmq.rabbitmq"):
            hung.close()
        assert "did not stop within" in caplog.text
        with adapter.publisher() as publisher:
            assert publisher.publish([Message(topology.topic, b"m2", key="k")])[0].ok

        with pytest.raises(BrokerUnavailable, match="still closing its connection"):
            proxied_adapter.subscribe(topology.group, [topology.work_queue], prefetch=10)
        # Another queue is not held up.
        proxied_adapter.subscribe(other.group, [other.work_queue]).close()
        # The partition ends while a subscription waits: once the hung connection's close
        # goes through, the subscription opens, and the held messages come back before m2.
        thaw = threading.Timer(1.0, proxy.thaw)
        thaw.start()
        started = time.monotonic()
        with proxied_adapter.subscribe(
            topology.group, [topology.work_queue], prefetch=10
        ) as subscription:
            waited = time.monotonic() - started
            again = _poll(subscription, 3)
            subscription.ack(again)
        thaw.join()
        assert waited >= 0.9
    finally:
        proxy.thaw()
    assert [d.message.body for d in again if d.message] == [b"m0", b"m1", b"m2"]
    # m2 too was sent down the hung connection (its consumer was still registered), so
    # the broker marks all three redelivered; what matters is the order.
    assert [d.redelivered for d in again[:2]] == [True, True]
    assert [d.message.id for d in held if d.message] == [
        d.message.id for d in again[:2] if d.message
    ]
