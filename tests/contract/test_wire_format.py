"""The wire format on real RabbitMQ and Kafka: what travels is the same on both brokers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

import txmq

pytestmark = pytest.mark.broker


@pytest.fixture
def broker(broker_url: str) -> Iterator[txmq.Adapter]:
    adapter = txmq.connect(broker_url)
    yield adapter
    adapter.close()


def test_stale_transport_headers_in_a_message_do_not_travel(broker: txmq.Adapter) -> None:
    # A message whose headers hold x-txmq-id/-topic/-key of some other message (copied over
    # by an application) must arrive as itself: its own id and topic, and no key.
    topic, group = f"wire.{uuid.uuid4().hex[:10]}", f"g-{uuid.uuid4().hex[:6]}"
    topology = txmq.Topology(group, topic)
    broker.declare([topology])
    stale = {"x-txmq-id": "other-id", "x-txmq-topic": "other.topic", "x-txmq-key": "other-key"}
    sent = txmq.Message(topic, b"body", headers={**stale, "app": "1"})
    with broker.publisher() as publisher:
        (outcome,) = publisher.publish([sent])
    assert outcome.ok, outcome.error
    with broker.subscribe(group, broker.sources_for([topology])) as subscription:
        deadline = time.monotonic() + 30
        deliveries: list[txmq.Delivery] = []
        while not deliveries and time.monotonic() < deadline:
            deliveries = subscription.poll(0.5)
        subscription.ack(deliveries)
    (delivery,) = deliveries
    assert delivery.message is not None
    assert (delivery.message.id, delivery.message.topic) == (sent.id, topic)
    assert delivery.message.key is None
    assert dict(delivery.message.headers) == {"app": "1"}
