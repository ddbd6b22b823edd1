"""Consume throughput: txmq's Consumer (inbox on PostgreSQL) against raw baselines.

Measured in one run, on the same broker and database:

* raw pika: manual ack, prefetch 1000, one multiple-ack every 100 messages (no database);
* raw PostgreSQL: one single-row INSERT + COMMIT per row, one connection (no broker);
* txmq per-message mode: one DB transaction per message (the inbox row), 1 and 4 workers;
* txmq batch mode: up to ``--batch`` messages per DB transaction and one ack;
* with ``--kafka``: raw confluent-kafka consume (manual commit per poll batch) and txmq
  batch mode on Kafka.

The txmq handlers do nothing, so the inbox row is the one write per message, like the
PostgreSQL baseline's row, and the figures are txmq's own cost. The queue is filled
before a consumer starts; the clock runs from the first message handled to the last one
processed (Kafka's group join is not counted). ``--durable-database`` adds the
per-message comparison on a PostgreSQL with ``fsync=on`` (a shared development server
often runs with ``fsync=off``, where a commit costs only a round trip). Targets:
batch >= 0.5x raw pika; per-message >= 0.8x PostgreSQL's single-row commit rate.

    python benchmarks/bench_consumer.py --count 20000 --per-message-count 3000
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable

import psycopg
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine
from sqlalchemy.orm import Session

import txmq
from txmq.adapters import Adapter, Topology
from txmq.adapters.rabbitmq.connection import open_blocking
from txmq.consumer import Consumer, make_inbox_table
from txmq.message import Message


def fill(adapter: Adapter, topology: Topology, count: int) -> None:
    adapter.declare([topology])
    body = b"x" * 200
    with adapter.publisher() as publisher:
        for start in range(0, count, 1000):
            batch = [Message(topology.topic, body) for _ in range(min(1000, count - start))]
            assert all(o.ok for o in publisher.publish(batch))


def raw_pika(adapter: Adapter, count: int) -> float:
    """msg/s of a bare pika consumer: prefetch 1000, multiple-ack every 100."""
    settings = adapter.settings
    assert settings.system == "rabbitmq"
    topology = Topology(f"bench{uuid.uuid4().hex[:8]}", f"raw{uuid.uuid4().hex[:8]}")
    fill(adapter, topology, count)
    connection = open_blocking(settings, name="bench raw pika")
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1000)
    started = 0.0
    deliveries = channel.consume(topology.work_queue, auto_ack=False)
    for received, (method, _properties, _body) in enumerate(deliveries, start=1):
        if received == 1:
            started = time.perf_counter()
        if received % 100 == 0 or received == count:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if received == count:
            break
    elapsed = time.perf_counter() - started
    channel.cancel()
    channel.queue_delete(topology.work_queue)
    connection.close()
    return count / elapsed


def raw_kafka(adapter: Adapter, count: int) -> float:
    """msg/s of a bare confluent-kafka consumer committing synchronously per poll batch."""
    from confluent_kafka import Consumer as KafkaConsumer

    settings = adapter.settings
    assert settings.system == "kafka"
    topology = Topology(f"bench{uuid.uuid4().hex[:8]}", f"raw{uuid.uuid4().hex[:8]}")
    fill(adapter, topology, count)
    consumer = KafkaConsumer(
        {
            "bootstrap.servers": ",".join(settings.bootstrap_servers),
            "group.id": topology.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topology.topic])
    received = 0
    started = 0.0
    while received < count:
        records = consumer.consume(1000, timeout=1.0)
        records = [r for r in records if r.error() is None]
        if records and received == 0:
            started = time.perf_counter()
        received += len(records)
        if records:
            consumer.commit(asynchronous=False)
    elapsed = time.perf_counter() - started
    consumer.close()
    return count / elapsed


def bench_table(metadata: MetaData, suffix: str) -> Table:
    return Table(
        f"bench_rows_{suffix}",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("message_id", String(80), nullable=False),
    )


def raw_postgres(database_url: str, count: int) -> float:
    """Single-row INSERT + COMMIT per row on one psycopg connection."""
    suffix = uuid.uuid4().hex[:8]
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        conn.execute(f"CREATE TABLE bench_pg_{suffix} (id serial primary key, v varchar(80))")
        conn.commit()
        started = time.perf_counter()
        for i in range(count):
            conn.execute(f"INSERT INTO bench_pg_{suffix} (v) VALUES (%s)", (str(i),))
            conn.commit()
        elapsed = time.perf_counter() - started
        conn.execute(f"DROP TABLE bench_pg_{suffix}")
        conn.commit()
    return count / elapsed


def txmq_consumer(
    adapter: Adapter, engine: Engine, count: int, *, write_row: bool = False, **options: int
) -> float:
    """msg/s of a txmq Consumer, inbox on PostgreSQL; the handler inserts a row if asked."""
    suffix = uuid.uuid4().hex[:8]
    metadata = MetaData()
    inbox = make_inbox_table(metadata, name=f"bench_inbox_{suffix}")
    rows = bench_table(metadata, suffix)
    metadata.create_all(engine)
    group, topic = f"bench{suffix}", f"bench{suffix}.evt"
    consumer = Consumer(broker=adapter, engine=engine, group=group, inbox=inbox,
                        poll_interval=0.2, **options)  # type: ignore[arg-type]  # fmt: skip
    first: list[float] = []

    @consumer.handler(topic)
    def handler(message: Message, session: Session) -> None:
        if not first:
            first.append(time.perf_counter())
        if write_row:
            session.execute(rows.insert().values(message_id=message.id))

    try:
        fill(adapter, consumer.topologies()[0], count)
        consumer.start()
        wait(lambda: consumer.stats.processed >= count, 600)
        elapsed = time.perf_counter() - first[0]
    finally:
        consumer.stop()
        metadata.drop_all(engine)
    return count / elapsed


def wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish")
        time.sleep(0.001)


def median_of(rounds: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rabbitmq", default=os.environ.get("TXMQ_TEST_RABBITMQ_URL"))
    parser.add_argument("--kafka", default=None, help="also run on this Kafka URL")
    parser.add_argument("--database", default=os.environ.get("TXMQ_TEST_DATABASE_URL"))
    parser.add_argument(
        "--durable-database",
        default=None,
        help="a second PostgreSQL with fsync=on for the per-message comparison",
    )
    parser.add_argument("--count", type=int, default=20000, help="messages for raw and batch")
    parser.add_argument("--per-message-count", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="median of this many rounds")
    args = parser.parse_args()

    rabbit = txmq.connect(args.rabbitmq)
    engine = create_engine(args.database, pool_size=5)
    n, rounds = args.per_message_count, args.rounds
    results: dict[str, float] = {}
    ratios: list[tuple[str, str, str, float]] = []

    def compare(name: str, measure: Callable[[], float], base: str, target: float) -> None:
        results[name] = median_of(rounds, measure)
        ratios.append((name, base, f">= {target}", results[name] / results[base]))

    results["raw pika (prefetch 1000, ack/100)"] = median_of(
        rounds, lambda: raw_pika(rabbit, args.count)
    )
    compare(
        "txmq rabbitmq batch",
        lambda: txmq_consumer(rabbit, engine, args.count, prefetch=1000, batch_size=args.batch),
        "raw pika (prefetch 1000, ack/100)",
        0.5,
    )
    for label, url in (("", args.database), (" durable", args.durable_database)):
        if url is None:
            continue
        db = create_engine(url, pool_size=5)
        base = f"raw PostgreSQL{label} insert+commit"
        results[base] = median_of(rounds, lambda url=url: raw_postgres(url, n))  # type: ignore[misc]
        compare(
            f"txmq rabbitmq per-message{label}",
            lambda db=db: txmq_consumer(rabbit, db, n, prefetch=1000),  # type: ignore[misc]
            base,
            0.8,
        )
        compare(
            f"txmq rabbitmq per-message{label}, 4 workers",
            lambda db=db: txmq_consumer(rabbit, db, n, prefetch=250, concurrency=4),  # type: ignore[misc]
            base,
            0.8,
        )
        db.dispose()
    if args.kafka:
        kafka = txmq.connect(args.kafka)
        results["raw confluent-kafka (commit/poll)"] = median_of(
            rounds, lambda: raw_kafka(kafka, args.count)
        )
        compare(
            "txmq kafka batch",
            lambda: txmq_consumer(kafka, engine, args.count, prefetch=1000, batch_size=args.batch),
            "raw confluent-kafka (commit/poll)",
            0.5,
        )
        compare(
            "txmq kafka per-message",
            lambda: txmq_consumer(kafka, engine, n, prefetch=1000),
            "raw PostgreSQL insert+commit",
            0.8,
        )
        kafka.close()
    rabbit.close()

    print(f"median of {rounds} rounds")
    for name, rate in results.items():
        print(f"  {name:<42} {rate:>10,.0f} msg/s")
    for name, base, target, ratio in ratios:
        print(f"  {name} / {base}: {ratio:.2f}x (target {target})")


if __name__ == "__main__":
    main()
