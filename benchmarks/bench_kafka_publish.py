"""Kafka publish throughput: txmq's publishers against hand-written confluent-kafka loops.

Four ways to publish the same messages (same count, body size, keys and batch size), each
waiting for the broker per batch:

* raw transactional: ``begin_transaction``, ``produce`` the batch, ``commit_transaction``;
* txmq transactional: ``KafkaTransactionalPublisher.publish(batch)`` (what the relay does);
* raw idempotent: ``produce`` the batch with a delivery callback, ``flush``;
* txmq idempotent: ``KafkaPublisher.publish(batch)``.

The raw loops get their records ready-made (value, key, one id header); txmq's time
includes encoding its headers and mapping outcomes. Target: txmq transactional at least
0.5x the raw transactional loop. Besides wall-clock throughput, the process CPU time per
message (Python and librdkafka threads) is shown: on a shared, busy machine it is the
steadier measure of txmq's own overhead.

    python benchmarks/bench_kafka_publish.py --count 20000 --size 200 --batch 500
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

import txmq
from txmq.adapters.kafka.adapter import KafkaAdapter
from txmq.message import Message
from txmq.wire import HEADER_ID

_KEYS = 16


class _Quiet:
    """librdkafka logger for the raw producers: nothing to say during a benchmark."""

    def log(self, *_: object) -> None:
        pass


def _batches(items: list[Message], size: int) -> list[list[Message]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _raw_records(batch: list[Message]) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    return [(m.body, (m.key or "").encode(), [(HEADER_ID, m.id.encode())]) for m in batch]


class _Clock:
    """Wall-clock and process CPU time since creation."""

    def __init__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self._wall, time.process_time() - self._cpu


def raw_transactional(
    bootstrap: str, topic: str, batches: list[list[Message]]
) -> tuple[float, float]:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"bench-raw-{uuid.uuid4().hex}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            "logger": _Quiet(),
        }
    )
    producer.init_transactions(30)
    records = [_raw_records(batch) for batch in batches]
    clock = _Clock()
    for batch in records:
        producer.begin_transaction()
        for value, key, headers in batch:
            producer.produce(topic, value, key, headers=headers)
        producer.commit_transaction(30)
    elapsed = clock.read()
    producer.flush(10)
    return elapsed


def raw_idempotent(bootstrap: str, topic: str, batches: list[list[Message]]) -> tuple[float, float]:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            "logger": _Quiet(),
        }
    )
    producer.list_topics(topic, timeout=30)  # connect before timing, like the others
    failures = 0

    def on_delivery(error: object, _: object) -> None:
        nonlocal failures
        failures += error is not None

    records = [_raw_records(batch) for batch in batches]
    clock = _Clock()
    for batch in records:
        for value, key, headers in batch:
            producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
        producer.flush(30)
    elapsed = clock.read()
    if failures:
        raise SystemExit(f"raw idempotent: {failures} messages failed")
    return elapsed


def txmq_publish(
    adapter: KafkaAdapter, batches: list[list[Message]], identity: str | None
) -> tuple[float, float]:
    with adapter.publisher(identity=identity) as publisher:
        publisher.publish(batches[0][:1])  # connect (and init transactions) before timing
        clock = _Clock()
        for batch in batches:
            outcomes = publisher.publish(batch)
            if not all(o.ok for o in outcomes):
                raise SystemExit(f"txmq: failed outcome {next(o for o in outcomes if not o.ok)}")
        return clock.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("TXMQ_TEST_KAFKA_URL"))
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=200, help="body bytes")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each way; median shown")
    args = parser.parse_args()
    if not args.url:
        parser.error("give --url or set TXMQ_TEST_KAFKA_URL")

    adapter = txmq.connect(args.url)
    assert isinstance(adapter, KafkaAdapter)
    bootstrap = ",".join(adapter.settings.bootstrap_servers)
    topic = f"bench-{uuid.uuid4().hex[:10]}"
    adapter.declare([txmq.Topology(f"{topic}-group", topic)])
    messages = [
        Message(topic, os.urandom(args.size), key=f"k{i % _KEYS}") for i in range(args.count)
    ]
    batches = _batches(messages, args.batch)

    ways: dict[str, Callable[[], tuple[float, float]]] = {
        "raw transactional": lambda: raw_transactional(bootstrap, topic, batches),
        "txmq transactional": lambda: txmq_publish(adapter, batches, f"bench-{uuid.uuid4().hex}"),
        "raw idempotent": lambda: raw_idempotent(bootstrap, topic, batches),
        "txmq idempotent": lambda: txmq_publish(adapter, batches, None),
    }
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    try:
        for _ in range(args.rounds):
            for name, run in ways.items():  # interleaved, so drift hits every way alike
                timings[name].append(run())
    finally:
        admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _Quiet()})
        for future in admin.delete_topics([topic, f"{topic}-group.{topic}.dlq"]).values():
            future.result(timeout=30)
        adapter.close()

    rate = {name: args.count / statistics.median(w for w, _ in t) for name, t in timings.items()}
    cpu = {
        name: statistics.median(c for _, c in t) / args.count * 1e6 for name, t in timings.items()
    }
    print(
        f"{args.count} messages x {args.size} B, batch {args.batch}, "
        f"median of {args.rounds} round(s)"
    )
    for name in ways:
        print(f"  {name:<20} {rate[name]:>10,.0f} msg/s  {cpu[name]:6.1f} us CPU/msg")
    for kind in ("transactional", "idempotent"):
        ratio = rate[f"txmq {kind}"] / rate[f"raw {kind}"]
        cpu_ratio = cpu[f"txmq {kind}"] / cpu[f"raw {kind}"]
        target = " (target >= 0.5x)" if kind == "transactional" else ""
        print(f"  txmq/raw {kind:<13} {ratio:.2f}x throughput{target}, {cpu_ratio:.2f}x CPU")


if __name__ == "__main__":
    main()
