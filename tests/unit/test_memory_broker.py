"""``memory://`` broker URLs: one in-process :class:`InMemoryBroker` per name."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

import txmq
from txmq.adapters.base import Topology
from txmq.adapters.memory.adapter import InMemoryBroker, forget_memory_broker
from txmq.adapters.memory.settings import MemorySettings
from txmq.adapters.registry import parse_broker_url
from txmq.errors import ConfigurationError, InvalidURL
from txmq.message import Message


@pytest.fixture
def name() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    forget_memory_broker(name)


def test_memory_url_options_are_parsed() -> None:
    settings = parse_broker_url(
        "memory://a.b_c-1/?retry_mode=consume&unroutable=return&max_body_bytes=10"
    )
    assert settings == MemorySettings(
        name="a.b_c-1",
        retry_mode="consume",
        unroutable="return",
        common=settings.common,
    )
    assert settings.common.max_body_bytes == 10
    assert settings.redacted_url() == "memory://a.b_c-1"
    assert parse_broker_url("MEMORY://") == MemorySettings()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory://a/b", "only letters, digits"),
        ("memory://x?retry_mode=later", "retry_mode must be ttl or consume"),
        ("memory://x?unroutable=drop", "unroutable must be hold or return"),
        ("memory://x?queue_type=quorum", "unknown option(s) ['queue_type']"),
        ("memory://x?max_body_bytes=big", "bad number"),
    ],
)
def test_bad_memory_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(InvalidURL, match=re.escape(message)):
        parse_broker_url(url)


def test_one_broker_per_name_shared_by_every_connect(name: str) -> None:
    producer_side = txmq.connect(f"memory://{name}")
    consumer_side = txmq.connect(f"memory://{name}")
    other = txmq.connect(f"memory://{name}-other")
    try:
        assert isinstance(producer_side, InMemoryBroker)
        assert consumer_side is producer_side
        assert other is not producer_side
        consumer_side.declare([Topology("g", "t")])
        with producer_side.publisher() as publisher:
            assert publisher.publish([Message("t", b"x")])[0].ok
        subscription = consumer_side.subscribe("g", consumer_side.sources_for([Topology("g", "t")]))
        assert [d.message.body for d in subscription.poll(5.0) if d.message] == [b"x"]
        subscription.close()
        assert other.depth(Topology("g", "t").work_queue) == 0
    finally:
        forget_memory_broker(f"{name}-other")


def test_the_options_come_from_the_url(name: str) -> None:
    broker = txmq.connect(f"memory://{name}?retry_mode=consume&unroutable=return&max_body_bytes=64")
    assert isinstance(broker, InMemoryBroker)
    assert (broker.retry_mode, broker.unroutable, broker.max_body_bytes) == (
        "consume",
        "return",
        64,
    )
    assert broker.unroutable_queue is None
    assert broker.settings.redacted_url() == f"memory://{name}"


def test_a_name_asked_for_with_other_options_is_refused(name: str) -> None:
    txmq.connect(f"memory://{name}")
    with pytest.raises(ConfigurationError, match="already exists with retry_mode=ttl"):
        txmq.connect(f"memory://{name}?retry_mode=consume")


def test_a_forgotten_broker_starts_empty(name: str) -> None:
    broker = txmq.connect(f"memory://{name}")
    broker.declare([Topology("g", "t")])
    forget_memory_broker(name)
    again = txmq.connect(f"memory://{name}")
    assert again is not broker
    with pytest.raises(txmq.errors.QueueNotFound):
        again.browse(Topology("g", "t").work_queue)


def test_memory_urls_import_no_broker_driver() -> None:
    code = (
        "import sys, txmq; txmq.connect('memory://x');"
        "print(sorted(m for m in ('pika', 'confluent_kafka') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
