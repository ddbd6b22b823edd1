"""Fixtures for the Kafka adapter's broker tests: unique names, cleanup, outside views."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

import txmq
from txmq.adapters.base import Subscription, Topology
from txmq.adapters.kafka.adapter import KafkaAdapter
from txmq.adapters.kafka.settings import KafkaSettings
from txmq.adapters.registry import parse_broker_url
from txmq.wire import Delivery

pytestmark = pytest.mark.broker


def _bootstrap(url: str) -> str:
    settings = parse_broker_url(url)
    assert isinstance(settings, KafkaSettings)
    return ",".join(settings.bootstrap_servers)


def _silent() -> Any:
    """A librdkafka logger that drops everything (the tests' own clients)."""
    return type("Silent", (), {"log": lambda *_: None})()


def _drain(
    subscription: Subscription,
    count: int,
    *,
    timeout: float = 30.0,
    ack: bool = True,
    stop: Callable[[list[Delivery]], bool] | None = None,
) -> list[Delivery]:
    received: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and not (stop and stop(received)):
        if time.monotonic() > deadline:
            raise AssertionError(f"got {len(received)} of {count} deliveries within {timeout} s")
        batch = subscription.poll(0.5, max_messages=500)
        if ack and batch:
            subscription.ack(batch)
        received.extend(batch)
    return received


@pytest.fixture
def drain() -> Callable[..., list[Delivery]]:
    """``drain(subscription, count, timeout=30, ack=True, stop=None)``: poll until ``count``
    deliveries (or ``stop(received)``), acking them unless ``ack=False``."""
    return _drain


@pytest.fixture
def adapter(kafka_url: str) -> Iterator[KafkaAdapter]:
    broker = txmq.connect(kafka_url)
    assert isinstance(broker, KafkaAdapter)
    yield broker
    broker.close()


@pytest.fixture
def cleanup(kafka_url: str) -> Iterator[list[str]]:
    """Topic names to delete after the test (the shared broker stays tidy)."""
    topics: list[str] = []
    yield topics
    if topics:
        admin = AdminClient({"bootstrap.servers": _bootstrap(kafka_url), "logger": _silent()})
        for future in admin.delete_topics(list(set(topics)), operation_timeout=10).values():
            # Best effort: a topic the test never got to create is fine.
            with contextlib.suppress(Exception):
                future.result(timeout=15)


@pytest.fixture
def declared(
    adapter: KafkaAdapter, unique: Callable[[str], str], cleanup: list[str]
) -> Callable[..., Topology]:
    """Declare a topology with unique group/topic names; its topics are deleted afterwards."""
    counter = iter(range(1000))

    def declare(retry_delays: tuple[float, ...] = (), *, group: str | None = None) -> Topology:
        n = next(counter)
        topology = Topology(group or unique(f"g{n}"), unique(f"t{n}"), retry_delays=retry_delays)
        cleanup.extend([topology.topic, topology.dead_letter_queue, *topology.retry_queues()])
        adapter.declare([topology])
        return topology

    return declare


@pytest.fixture
def raw_producer(kafka_url: str) -> Iterator[Producer]:
    """A plain confluent-kafka producer, for records txmq would never write."""
    producer = Producer({"bootstrap.servers": _bootstrap(kafka_url), "logger": _silent()})
    yield producer
    producer.flush(10)


@pytest.fixture
def committed_offsets(kafka_url: str) -> Callable[[str, str], dict[int, int]]:
    """``committed_offsets(group, topic)``: the group's committed offset per partition."""

    def committed(group: str, topic: str) -> dict[int, int]:
        consumer = Consumer(
            {"bootstrap.servers": _bootstrap(kafka_url), "group.id": group, "logger": _silent()}
        )
        try:
            metadata = consumer.list_topics(topic, timeout=10)
            partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
            return {
                tp.partition: tp.offset
                for tp in consumer.committed(partitions, timeout=10)
                if tp.offset >= 0
            }
        finally:
            consumer.close()

    return committed
