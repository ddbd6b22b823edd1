"""What each adapter says it does, and that the layers above decide by that, not by name."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import create_engine

import txmq
from txmq.adapters.base import Adapter, Capabilities, Transaction
from txmq.adapters.kafka.adapter import (
    KafkaAdapter,
    KafkaPublisher,
    KafkaTransactionalPublisher,
)
from txmq.adapters.memory.adapter import InMemoryBroker
from txmq.adapters.names import work_queue
from txmq.adapters.rabbitmq.adapter import RabbitMQAdapter
from txmq.adapters.registry import adapter_for, parse_broker_url
from txmq.errors import ConfigurationError
from txmq.outbox import Producer

SRC = Path(txmq.__file__).parent


def adapter(url: str) -> Adapter:
    return adapter_for(parse_broker_url(url))


def test_each_broker_states_its_capabilities() -> None:
    assert adapter("rabbitmq://guest:guest@127.0.0.1/").capabilities == Capabilities(
        native_transactions=False,
        retry_delays="queue_ttl",
        replays_to="work_queue",
        competing_consumers=True,
    )
    assert adapter("kafka://127.0.0.1:9092").capabilities == Capabilities(
        native_transactions=True,
        retry_delays="due_time",
        replays_to="topic",
        competing_consumers=False,
    )
    ttl, consume = InMemoryBroker(), InMemoryBroker(retry_mode="consume")
    assert ttl.capabilities == Capabilities(competing_consumers=True)
    assert consume.capabilities == Capabilities(retry_delays="due_time", competing_consumers=True)


def test_a_replay_goes_where_the_capabilities_say() -> None:
    rabbit = adapter("rabbitmq://guest:guest@127.0.0.1/")
    kafka = adapter("kafka://127.0.0.1:9092")
    assert rabbit.replay_destination("g", "t") == work_queue("g", "t")
    assert kafka.replay_destination("g", "t") == "t"
    assert InMemoryBroker(retry_mode="consume").replay_destination("g", "t") == work_queue("g", "t")


def test_the_kafka_adapter_names_its_transactions_as_before() -> None:
    """Upgrades fence the producers of earlier releases only with the same ids."""
    kafka = adapter("kafka://127.0.0.1:9092")
    assert isinstance(kafka, KafkaAdapter)
    relay_lane = kafka.publisher(identity="relay-abc-0")
    assert isinstance(relay_lane, KafkaTransactionalPublisher)
    assert relay_lane.transactional_id == "txmq-relay-abc-0"
    half = kafka.transaction("orders-abc-1")
    assert isinstance(half, Transaction)
    assert half.transactional_id == "txmq-orders-abc-1"
    plain = kafka.publisher()
    assert type(plain) is KafkaPublisher
    for publisher in (relay_lane, half, plain):
        publisher.close()


@pytest.mark.parametrize(
    "broker",
    [
        pytest.param(lambda: adapter("kafka://127.0.0.1:9092"), id="kafka"),
        pytest.param(lambda: adapter("rabbitmq://guest:guest@127.0.0.1/"), id="rabbitmq"),
        pytest.param(InMemoryBroker, id="memory"),
    ],
)
def test_an_empty_identity_is_refused(broker: object) -> None:
    made = broker()  # type: ignore[operator]
    assert isinstance(made, Adapter)
    with pytest.raises(ConfigurationError, match="identity"):
        made.publisher(identity="")
    if made.capabilities.native_transactions:
        with pytest.raises(ConfigurationError, match="identity"):
            made.transaction("")


def test_brokers_without_native_transactions_offer_none() -> None:
    assert InMemoryBroker().transaction("orders-1") is None
    rabbit = adapter("rabbitmq://guest:guest@127.0.0.1/")
    assert isinstance(rabbit, RabbitMQAdapter)
    assert rabbit.transaction("orders-1") is None


class _NamedKafka(InMemoryBroker):
    system = "kafka"  # the name alone must not make half messages native


def test_the_producer_goes_native_by_capability_not_by_name() -> None:
    engine = create_engine("sqlite://")
    named = Producer(group="orders", engine=engine, broker=_NamedKafka())
    assert not named.kafka_native
    able = InMemoryBroker()
    able.capabilities = replace(able.capabilities, native_transactions=True)
    assert Producer(group="orders", engine=engine, broker=able).kafka_native
    assert not Producer(group="orders", engine=engine, broker=able, kafka_native=False).kafka_native


def _compares_system(tree: ast.AST) -> list[int]:
    """Lines comparing something's ``.system`` (``x.system == ...``)."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and any(
            isinstance(side, ast.Attribute) and side.attr == "system"
            for side in (node.left, *node.comparators)
        )
    ]


def test_no_code_above_the_adapters_compares_broker_names() -> None:
    found = {
        str(path.relative_to(SRC)): lines
        for path in sorted(SRC.rglob("*.py"))
        if "adapters" not in path.relative_to(SRC).parts
        and (lines := _compares_system(ast.parse(path.read_text(), str(path))))
    }
    assert found == {}
