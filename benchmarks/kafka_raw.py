"""Raw confluent-kafka baselines: a transactional loop, an idempotent producer, a consumer.

The producers send what the relay sends (value, key, an id header) with the relay's
producer settings (``acks=all``, idempotence, ``linger.ms=5``); the transactional loop
commits one Kafka transaction per ``batch`` records. The consumer commits its offsets
synchronously once per poll of up to 1000 records. Nothing of txmq is used but its URL
parsing.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer

from benchmarks.environment import kafka_config
from benchmarks.harness import CpuClock, Rate

KEYS = 16


class _Quiet:
    """librdkafka logger for the raw clients: nothing to say during a benchmark."""

    def log(self, *_: object) -> None:
        pass


def _records(count: int) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    return [
        (f"k{i % KEYS}".encode(), [("x-txmq-id", uuid.uuid4().hex.encode())]) for i in range(count)
    ]


def _producer(url: str, **options: Any) -> Any:
    return Producer(
        {
            **kafka_config(url),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            "logger": _Quiet(),
            **options,
        }
    )


def transactional(url: str, topic: str, count: int, body: bytes, batch: int) -> Rate:
    """msg/s producing ``count`` records, one transaction per ``batch`` of them."""
    producer = _producer(url, **{"transactional.id": f"bench-raw-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    records = _records(count)
    clock = CpuClock()
    for start in range(0, count, batch):
        producer.begin_transaction()
        for key, headers in records[start : start + batch]:
            producer.produce(topic, body, key, headers=headers)
        producer.commit_transaction(30)
    rate = clock.rate(count)
    producer.flush(10)
    return rate


def idempotent(url: str, topic: str, count: int, body: bytes, batch: int) -> Rate:
    """msg/s producing ``count`` records, waiting for delivery once per ``batch``."""
    producer = _producer(url)
    producer.list_topics(topic, timeout=30)  # connected before the clock starts
    failures = 0

    def on_delivery(error: object, _: object) -> None:
        nonlocal failures
        failures += error is not None

    records = _records(count)
    clock = CpuClock()
    for start in range(0, count, batch):
        for key, headers in records[start : start + batch]:
            producer.produce(topic, body, key, headers=headers, on_delivery=on_delivery)
        producer.flush(30)
    rate = clock.rate(count)
    assert failures == 0, f"raw idempotent: {failures} records failed"
    return rate


def flushing_producer(url: str) -> Any:
    """An idempotent producer for the naive outbox's confirm-each publishing."""
    return _producer(url, **{"linger.ms": 0})


def consumer(url: str, topic: str, count: int) -> Rate:
    """msg/s of a bare consumer of ``topic`` (holding ``count`` records) in a new group,
    committing synchronously per poll; timed from the first record (the join is not)."""
    client = Consumer(
        {
            **kafka_config(url),
            "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "logger": _Quiet(),
        }
    )
    client.subscribe([topic])
    received = 0
    clock = CpuClock()
    deadline = time.monotonic() + 300
    try:
        while received < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw consumer read {received} of {count} records")
            records = [r for r in client.consume(1000, timeout=1.0) if r.error() is None]
            if records and received == 0:
                clock = CpuClock()
            received += len(records)
            if records:
                client.commit(asynchronous=False)
        return clock.rate(count)
    finally:
        client.close()
