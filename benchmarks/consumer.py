"""Consume throughput: txmq's Consumer (default inbox, on PostgreSQL) against raw baselines.

Each round, on one broker, with the queue filled before a consumer starts and the clock
running from the first message handled to the last one processed (Kafka's group join is
not counted):

* the raw consumer: RabbitMQ, pika with manual ack, prefetch 1000, one multiple-ack every
  100 messages; Kafka, confluent-kafka committing synchronously per poll of 1000;
* PostgreSQL's single-row commit rate (one INSERT + COMMIT per row, raw psycopg), and its
  inbox rate in batches of 500 (the same INSERT .. ON CONFLICT over arrays as txmq's inbox,
  raw psycopg): no consumer that writes an inbox row per message goes faster here, so the
  batch figure is also given against it;
* txmq per-message mode (the defaults: one database transaction, the inbox row, per
  message, one worker), batch mode (``batch_size=500, prefetch=1000``) and
  ``batch_size="auto"`` (per message while it keeps up; here, with the queue filled
  beforehand, transactions of up to 100);
* ``txmq.aio.AsyncConsumer`` per message, against the synchronous per-message figure
  (:mod:`benchmarks.aio`).

The txmq handlers do nothing, so the inbox row is the one write per message, like the
PostgreSQL baseline's row, and the figures are txmq's own cost. Targets: batch >= 0.5x the
raw consumer; per-message >= 0.8x PostgreSQL's single-row commit rate; async per-message
>= 0.8x the synchronous per-message figure.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Engine

import txmq
from benchmarks import aio, database
from benchmarks.environment import remove_topologies
from benchmarks.harness import CpuClock, Rate, Results, Target, alternate, wait

BATCH = {"batch_size": 500, "prefetch": 1000}


def fill(adapter: txmq.Adapter, topology: txmq.Topology, count: int) -> None:
    """Declare ``topology`` and put ``count`` 200-byte messages on its topic."""
    adapter.declare([topology])
    body = b"x" * 200
    with adapter.publisher() as publisher:
        for start in range(0, count, 1000):
            batch = [txmq.Message(topology.topic, body) for _ in range(min(1000, count - start))]
            assert all(o.ok for o in publisher.publish(batch))


def txmq_consumer(
    adapter: txmq.Adapter, engine: Engine, name: str, count: int, **options: Any
) -> Rate:
    """The rate of a txmq Consumer with a do-nothing handler over ``count`` messages."""
    consumer = txmq.Consumer(
        broker=adapter, engine=engine, group=f"{name}-g", poll_interval=0.2, **options
    )
    clock: list[CpuClock] = []

    @consumer.handler(f"{name}.evt")
    def handler(message: txmq.Message, session: object) -> None:
        if not clock:
            clock.append(CpuClock())

    fill(adapter, consumer.topologies()[0], count)
    consumer.start()
    try:
        wait(lambda: consumer.stats.processed >= count, 600, f"{count} messages consumed")
        return clock[0].rate(count)
    finally:
        consumer.stop()


def consumer_section(
    results: Results,
    broker: str,
    url: str,
    engine: Engine,
    count: int,
    per_message: int,
    rounds: int,
) -> None:
    """Measure one broker's consumer figures and their baselines into ``results``."""
    from benchmarks import kafka_raw, rabbitmq_raw

    adapter = txmq.connect(url)
    suffix = uuid.uuid4().hex[:8]
    names: list[str] = []

    def topologies() -> list[txmq.Topology]:
        return [txmq.Topology(f"{name}-g", f"{name}.evt") for name in names]

    p = f"consumer.{broker}"
    raw_label = (
        "raw pika, manual ack, prefetch 1000, multiple-ack/100"
        if broker == "rabbitmq"
        else "raw confluent-kafka, commit per poll of 1000"
    )
    results.figure(f"{p}.raw", raw_label, "msg/s")
    results.figure(f"{p}.pg_commits", "PostgreSQL single-row INSERT + COMMIT", "commits/s")
    results.figure(
        f"{p}.batch",
        f"txmq consumer ({broker}), batch 500",
        "msg/s",
        baseline=f"{p}.raw",
        target=Target(0.5, "ratio"),
    )
    results.figure(
        f"{p}.inbox_floor",
        "PostgreSQL inbox rows, 500 a transaction (raw psycopg, the floor of any inbox)",
        "rows/s",
    )
    results.figure(
        f"{p}.batch_vs_floor",
        f"txmq consumer ({broker}), batch 500, against that floor",
        "msg/s",
        baseline=f"{p}.inbox_floor",
    )
    results.figure(
        f"{p}.per_message",
        f"txmq consumer ({broker}), per message",
        "msg/s",
        baseline=f"{p}.pg_commits",
        target=Target(0.8, "ratio"),
    )
    results.figure(
        f"{p}.auto",
        f'txmq consumer ({broker}), batch_size="auto", backlog',
        "msg/s",
        baseline=f"{p}.pg_commits",
    )
    results.figure(
        f"{p}.async_per_message",
        f"txmq AsyncConsumer ({broker}), per message",
        "msg/s",
        baseline=f"{p}.per_message",
        target=Target(0.8, "ratio"),
    )
    results.figure(
        f"{p}.sqlalchemy_sync_commits",
        "SQLAlchemy single-row INSERT + COMMIT, synchronous connection",
        "commits/s",
    )
    results.figure(
        f"{p}.sqlalchemy_async_commits",
        "the same loop on an asyncio connection (the floor of the AsyncConsumer's ratio)",
        "commits/s",
        baseline=f"{p}.sqlalchemy_sync_commits",
    )
    results.figure(
        f"cpu.consumer.{broker}.per_message",
        f"txmq consumer ({broker}), per message: CPU per 1,000",
        "s",
        better="lower",
    )
    results.figure(
        f"cpu.consumer.{broker}.batch",
        f"txmq consumer ({broker}), batch: CPU per 1,000",
        "s",
        better="lower",
        baseline=f"cpu.consumer.{broker}.raw",
    )
    results.figure(f"cpu.consumer.{broker}.raw", f"{raw_label}: CPU per 1,000", "s", better="lower")
    results.figure(
        f"cpu.consumer.{broker}.auto",
        f'txmq consumer ({broker}), batch_size="auto": CPU per 1,000',
        "s",
        better="lower",
    )

    def unique() -> str:
        names.append(f"bench{suffix}{len(names)}")
        return names[-1]

    def raw() -> dict[str, float]:
        topology = txmq.Topology(f"{unique()}-g", f"{names[-1]}.evt")
        fill(adapter, topology, count)
        if broker == "rabbitmq":
            rate = rabbitmq_raw.manual_ack_consumer(url, topology.work_queue, count)
        else:
            rate = kafka_raw.consumer(url, topology.topic, count)
        return {f"{p}.raw": rate.per_second, f"cpu.consumer.{broker}.raw": rate.cpu_per_1000}

    def pg_commits() -> dict[str, float]:
        url = engine.url.render_as_string(hide_password=False)
        return {f"{p}.pg_commits": database.single_row_commits(url, per_message)}

    def per_message_run() -> dict[str, float]:
        rate = txmq_consumer(adapter, engine, unique(), per_message)
        return {
            f"{p}.per_message": rate.per_second,
            f"cpu.consumer.{broker}.per_message": rate.cpu_per_1000,
        }

    def auto_run() -> dict[str, float]:
        rate = txmq_consumer(adapter, engine, unique(), per_message, batch_size="auto")
        return {f"{p}.auto": rate.per_second, f"cpu.consumer.{broker}.auto": rate.cpu_per_1000}

    def async_per_message_run() -> dict[str, float]:
        rate = aio.async_consumer_rate(adapter, engine, unique(), per_message)
        return {f"{p}.async_per_message": rate.per_second}

    def sqlalchemy_commits() -> dict[str, float]:
        sync_rate, async_rate = aio.sqlalchemy_commit_rates(engine, per_message)
        return {
            f"{p}.sqlalchemy_sync_commits": sync_rate,
            f"{p}.sqlalchemy_async_commits": async_rate,
        }

    def batch_run() -> dict[str, float]:
        rate = txmq_consumer(adapter, engine, unique(), count, **BATCH)
        return {
            f"{p}.batch": rate.per_second,
            f"{p}.batch_vs_floor": rate.per_second,
            f"cpu.consumer.{broker}.batch": rate.cpu_per_1000,
        }

    def inbox_floor() -> dict[str, float]:
        rows = database.inbox_batch_rows(engine, count, int(BATCH["batch_size"]))
        return {f"{p}.inbox_floor": rows}

    try:
        alternate(
            rounds,
            {
                "raw": raw,
                "txmq batch": batch_run,
                "PostgreSQL commits": pg_commits,
                "PostgreSQL inbox rows": inbox_floor,
                "txmq per message": per_message_run,
                "txmq auto": auto_run,
                "txmq async per message": async_per_message_run,
                "SQLAlchemy commits, sync and asyncio": sqlalchemy_commits,
            },
            results,
        )
    finally:
        remove_topologies(broker, url, topologies(), f"bench{suffix}")
        adapter.close()
