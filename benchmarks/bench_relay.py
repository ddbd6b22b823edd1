"""Relay throughput and staging cost, against raw-client baselines measured in the same run.

* relay -> RabbitMQ vs raw pika pipelined confirms (target ratio >= 0.8);
* relay -> Kafka vs the raw confluent-kafka transactional loop (target ratio >= 0.5);
* a one-row business transaction with and without ``Producer.stage`` (target: <= 10% slower).

The outbox lives in PostgreSQL. Relay time runs from the first claim to the last record
marked SENT (claim, publish, broker confirmation, mark, commit), with records pre-staged.

    python benchmarks/bench_relay.py --count 50000 --batch 1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import partial

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine, insert
from sqlalchemy.orm import Session

import txmq
from txmq.outbox import OutboxTables, Producer, make_outbox_tables

sys.path.insert(0, os.path.dirname(__file__))


def relay_rate(
    producer: Producer,
    topic: str,
    count: int,
    size: int,
    batch: int,
    retention: timedelta = timedelta(days=1),
) -> float:
    body = os.urandom(size)
    with Session(producer.engine) as session, session.begin():
        for start in range(0, count, 1000):
            producer.stage(
                session, *(txmq.Message(topic, body) for _ in range(min(1000, count - start)))
            )
    # connect(): Kafka's init_transactions happens before the clock starts.
    relay = producer.relay(batch_size=batch, retention=retention).connect()
    started = time.perf_counter()
    sent = relay.drain(timeout=600)
    elapsed = time.perf_counter() - started
    relay.stop()
    assert sent == count, f"relayed {sent} of {count}"
    return count / elapsed


def raw_rabbitmq_rate(adapter: txmq.Adapter, topic: str, count: int, size: int) -> float:
    from bench_rabbitmq_publish import raw_pika  # the adapter benchmark's baseline

    body = os.urandom(size)
    messages = [txmq.Message(topic, body) for _ in range(count)]
    return count / raw_pika(adapter, messages, 1500)  # type: ignore[arg-type]


def raw_kafka_rate(adapter: txmq.Adapter, topic: str, count: int, size: int, batch: int) -> float:
    from bench_kafka_publish import raw_transactional  # the adapter benchmark's baseline

    settings = adapter.settings
    assert isinstance(settings, txmq.KafkaSettings)
    body = os.urandom(size)
    batches = [
        [txmq.Message(topic, body) for _ in range(min(batch, count - start))]
        for start in range(0, count, batch)
    ]
    elapsed, _cpu = raw_transactional(",".join(settings.bootstrap_servers), topic, batches)
    return count / elapsed


def business_rate(
    engine: Engine, orders: Table, count: int, stage: Callable[[Session], None] | None
) -> float:
    started = time.perf_counter()
    for i in range(count):
        with Session(engine) as session, session.begin():
            session.execute(insert(orders).values(note=f"order {i}"))
            if stage is not None:
                stage(session)
    return count / (time.perf_counter() - started)


def bench_relay(
    name: str, url: str, engine: Engine, tables: OutboxTables, args: argparse.Namespace
) -> str:
    adapter = txmq.connect(url)
    topology = txmq.Topology(f"bench-{uuid.uuid4().hex[:6]}", f"bench.relay.{uuid.uuid4().hex[:8]}")
    adapter.declare([topology])
    producer = Producer(group="bench", engine=engine, broker=adapter, tables=tables)
    topic = topology.topic
    raw_run: Callable[[], float]
    if name == "rabbitmq":
        baseline, target = "raw pika pipelined confirms", 0.8
        raw_run = partial(raw_rabbitmq_rate, adapter, topic, args.count, args.size)
    else:
        baseline, target = "raw confluent-kafka transactional loop", 0.5
        raw_run = partial(raw_kafka_rate, adapter, topic, args.count, args.size, args.batch)
    queue = topology.work_queue if name == "rabbitmq" else topic

    def measured(run: Callable[[], float]) -> float:
        # Every RabbitMQ run starts on an empty queue: one holding the previous runs'
        # messages slows publishing down, which would favour whichever run came first.
        # Kafka's log depth does not matter, and deleting its records between runs made
        # the relay runs erratic.
        if name == "rabbitmq":
            adapter.purge_queue(queue)
        return run()

    # Interleaved rounds, so both see the same machine load.
    rounds = [
        (
            measured(raw_run),
            measured(partial(relay_rate, producer, topic, args.count, args.size, args.batch)),
            measured(
                partial(
                    relay_rate, producer, topic, args.count, args.size, args.batch, timedelta(0)
                )
            ),
        )
        for _ in range(args.rounds)
    ]
    raw, ours, unkept = (statistics.median(r[i] for r in rounds) for i in range(3))
    adapter.purge_queue(queue)
    producer.close()
    adapter.close()
    return (
        f"{name:8s} {baseline:40s} {raw:9,.0f} msg/s | relay {ours:9,.0f} msg/s | "
        f"ratio {ours / raw:.2f} (target >= {target}) | with retention 0 "
        f"{unkept:9,.0f} msg/s, ratio {unkept / raw:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default=os.environ.get("TXMQ_TEST_DATABASE_URL"))
    parser.add_argument("--rabbitmq", default=os.environ.get("TXMQ_TEST_RABBITMQ_URL"))
    parser.add_argument("--kafka", default=os.environ.get("TXMQ_TEST_KAFKA_URL"))
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--business-count", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not args.database:
        parser.error("give --database or set TXMQ_TEST_DATABASE_URL")

    engine = create_engine(args.database, pool_size=5)
    prefix = f"bench{uuid.uuid4().hex[:6]}_"
    metadata = MetaData()
    orders = Table(
        f"{prefix}orders",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("note", String(50)),
    )
    tables = make_outbox_tables(metadata, prefix=prefix)
    metadata.create_all(engine)
    lines: list[str] = []
    try:
        for name, url in (("rabbitmq", args.rabbitmq), ("kafka", args.kafka)):
            if url:
                lines.append(bench_relay(name, url, engine, tables, args))
                print(lines[-1], flush=True)
            else:
                print(f"skipping {name}: no URL")
        producer = Producer(group="bench", engine=engine, tables=tables)
        body = os.urandom(args.size)

        def stage(session: Session) -> None:
            producer.stage(session, txmq.Message("bench.stage", body))

        def second_insert(session: Session) -> None:
            session.execute(insert(orders).values(note="one more row"))

        # Interleaved rounds, so both see the same machine load.
        rounds = [
            [
                business_rate(engine, orders, args.business_count, extra)
                for extra in (None, stage, second_insert)
            ]
            for _ in range(args.rounds)
        ]
        plain, staged, floor = (statistics.median(r[i] for r in rounds) for i in range(3))
        lines.append(
            f"staging  one-row business tx {plain:9,.0f} tx/s | with stage() {staged:9,.0f} tx/s | "
            f"cost {(plain / staged - 1) * 100:.1f}% (target <= 10%; any second INSERT "
            f"costs {(plain / floor - 1) * 100:.1f}% here)"
        )
        print(lines[-1])
    finally:
        metadata.drop_all(engine)
        engine.dispose()
    rounds = f"median of {args.rounds} rounds"
    print(f"\n{args.count} messages x {args.size} B, batch {args.batch}, {rounds}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
