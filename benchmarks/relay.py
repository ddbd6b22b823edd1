"""Relay throughput per broker, against raw clients and a naive outbox, in the same rounds.

Each round, on one broker:

* the raw baselines (RabbitMQ: pika with pipelined confirms and with confirm-each; Kafka:
  confluent-kafka's transactional loop, ``batch`` records per transaction, and its
  idempotent producer);
* the naive outbox: claim one row, publish it waiting for its confirm, mark it, commit;
* txmq's relay (``producer.relay()`` with its defaults: batch 1000, two lanes, a day of
  retention) on a new, empty outbox table, and on one that already holds ``history`` SENT
  records. The records are staged (1000 per transaction) before the clock starts; it runs
  from the first claim to the last record marked SENT. The history run also counts the
  WAL and dead tuples each published message costs (staging included);
* txmq's relay on a new table that also holds ``delayed`` DELAYED records due in a day:
  what waiting delayed messages cost the relay of the others (the ratio to the empty run).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from sqlalchemy import Engine, MetaData, text
from sqlalchemy.orm import Session

import txmq
from benchmarks import database
from benchmarks.environment import remove_topologies
from benchmarks.harness import CpuClock, Rate, Results, Target, alternate

#: The issue's targets: relay / raw baseline.
TARGETS = {"rabbitmq": 0.8, "kafka": 0.5}
BASELINES = {
    "rabbitmq": ("raw_pipelined", "raw pika, pipelined confirms"),
    "kafka": ("raw_transactional", "raw confluent-kafka, transactional"),
}
SECOND_BASELINES = {
    "rabbitmq": ("raw_confirm_each", "raw pika, confirm-each"),
    "kafka": ("raw_idempotent", "raw confluent-kafka, idempotent"),
}


@dataclass(frozen=True, slots=True)
class Sizes:
    count: int
    history: int
    body: int
    batch: int
    rounds: int
    delayed: int = 50_000


def stage(producer: txmq.Producer, topic: str, count: int, body: bytes) -> None:
    with Session(producer.engine) as session, session.begin():
        for start in range(0, count, 1000):
            batch = min(1000, count - start)
            producer.stage(session, *(txmq.Message(topic, body) for _ in range(batch)))


def relay_run(producer: txmq.Producer, topic: str, count: int, body: bytes) -> Rate:
    """Stage ``count`` messages, then time their relay with the default settings."""
    stage(producer, topic, count, body)
    return relay_drain(producer, count)


def relay_drain(producer: txmq.Producer, count: int) -> Rate:
    """Time the relay of the ``count`` records staged, with the default settings."""
    relay = producer.relay().connect()  # Kafka's init_transactions happens before the clock
    try:
        clock = CpuClock()
        sent = relay.drain(timeout=600)
        rate = clock.rate(count)
    finally:
        relay.stop()
    assert sent == count, f"relayed {sent} of {count}"
    return rate


def add_history(
    engine: Engine, tables: txmq.OutboxTables, group: str, topic: str, rows: int, body: bytes
) -> None:
    """``rows`` SENT records of ``group``, as a day of default retention leaves them, then
    VACUUM ANALYZE as autovacuum would have done by then."""
    name = tables.records.name
    with engine.begin() as connection:
        connection.execute(
            text(
                f"INSERT INTO {name} (id, producer_group, topic, headers, body, state,"
                " check_count, publish_attempts, created_at, updated_at)"
                " SELECT md5(:salt || g::text), :group, :topic, '{}', :body, 'SENT', 0, 1,"
                " now(), now() FROM generate_series(1, :rows) AS g"
            ),
            {"salt": uuid.uuid4().hex, "group": group, "topic": topic, "body": body, "rows": rows},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"VACUUM ANALYZE {name}"))


def add_delayed(
    engine: Engine, tables: txmq.OutboxTables, group: str, topic: str, rows: int, body: bytes
) -> None:
    """``rows`` DELAYED records of ``group`` due in a day (then VACUUM ANALYZE)."""
    name = tables.records.name
    with engine.begin() as connection:
        connection.execute(
            text(
                f"INSERT INTO {name} (id, producer_group, topic, headers, body, state,"
                " check_count, publish_attempts, deliver_at, created_at, updated_at)"
                " SELECT md5(:salt || g::text), :group, :topic, '{}', :body, 'DELAYED', 0, 0,"
                " now() + interval '1 day', now(), now() FROM generate_series(1, :rows) AS g"
            ),
            {"salt": uuid.uuid4().hex, "group": group, "topic": topic, "body": body, "rows": rows},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"VACUUM ANALYZE {name}"))


class NaiveOutbox:
    """A hand-written outbox: a table of unsent rows, claimed and published one at a time."""

    def __init__(self, database_url: str, name: str) -> None:
        self.dsn = database.driver_dsn(database_url)
        self.table = f"bench_naive_{name}"
        with psycopg.connect(self.dsn) as connection:
            connection.execute(
                f"CREATE TABLE {self.table} (id bigserial PRIMARY KEY, topic text NOT NULL,"
                " body bytea NOT NULL, sent boolean NOT NULL DEFAULT false)"
            )
            connection.execute(
                f"CREATE INDEX ON {self.table} (id) WHERE NOT sent"  # what a claim reads
            )

    def run(self, topic: str, count: int, body: bytes, publish: Callable[[bytes], None]) -> Rate:
        with psycopg.connect(self.dsn) as connection:
            with connection.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {self.table} (topic, body) VALUES (%s, %s)",
                    [(topic, body)] * count,
                )
            connection.commit()
            clock = CpuClock()
            published = 0
            while True:
                row = connection.execute(
                    f"SELECT id, body FROM {self.table} WHERE NOT sent ORDER BY id"
                    " LIMIT 1 FOR UPDATE SKIP LOCKED"
                ).fetchone()
                if row is None:
                    break
                publish(row[1])
                connection.execute(f"UPDATE {self.table} SET sent = true WHERE id = %s", (row[0],))
                connection.commit()
                published += 1
            rate = clock.rate(count)
        assert published == count, f"naive outbox published {published} of {count}"
        return rate

    def drop(self) -> None:
        with psycopg.connect(self.dsn) as connection:
            connection.execute(f"DROP TABLE {self.table}")


def _naive_publisher(
    broker: str, url: str, topic: str
) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    """publish(body) waiting for the broker's confirmation, and how to close it."""
    if broker == "rabbitmq":
        import pika

        from benchmarks.environment import pika_parameters, rabbitmq_settings
        from benchmarks.rabbitmq_raw import PERSISTENT

        connection = pika.BlockingConnection(pika_parameters(url))
        channel = connection.channel()
        channel.confirm_delivery()
        exchange = rabbitmq_settings(url).exchange

        def publish_rabbitmq(body: bytes) -> None:
            properties = pika.BasicProperties(message_id=uuid.uuid4().hex, delivery_mode=PERSISTENT)
            channel.basic_publish(exchange, topic, body, properties, True)

        return publish_rabbitmq, connection.close

    from benchmarks.kafka_raw import flushing_producer

    producer = flushing_producer(url)

    def publish_kafka(body: bytes) -> None:
        producer.produce(topic, body)
        assert producer.flush(30) == 0, "naive outbox: a record was not delivered"

    return publish_kafka, lambda: producer.flush(10)


def relay_section(
    results: Results, broker: str, url: str, database_url: str, engine: Engine, sizes: Sizes
) -> None:
    """Measure one broker's relay figures and their baselines into ``results``."""
    from benchmarks import kafka_raw, rabbitmq_raw

    suffix = uuid.uuid4().hex[:8]
    adapter = txmq.connect(url)
    topology = txmq.Topology(f"bench-{suffix}", f"bench.relay.{suffix}")
    adapter.declare([topology])
    topic, group = topology.topic, f"bench-relay-{suffix}"
    body = os.urandom(sizes.body)
    tables_prefix = f"bench_{broker}"
    base, base_label = BASELINES[broker]
    second, second_label = SECOND_BASELINES[broker]
    p = f"relay.{broker}"
    results.figure(f"{p}.{base}", base_label, "msg/s")
    results.figure(f"{p}.{second}", second_label, "msg/s")
    results.figure(f"{p}.naive", "naive outbox (claim 1, confirm-each, mark)", "msg/s")
    target = Target(TARGETS[broker], "ratio")
    results.figure(
        f"{p}.empty",
        f"relay -> {broker}, empty outbox",
        "msg/s",
        baseline=f"{p}.{base}",
        target=target,
    )
    results.figure(
        f"{p}.history",
        f"relay -> {broker}, {sizes.history:,} SENT rows",
        "msg/s",
        baseline=f"{p}.{base}",
        target=target,
    )
    results.figure(
        f"{p}.delayed_waiting",
        f"relay -> {broker}, {sizes.delayed:,} DELAYED rows waiting",
        "msg/s",
        baseline=f"{p}.empty",
    )
    results.figure(
        f"{p}.history_vs_naive",
        f"relay -> {broker} vs the naive outbox",
        "msg/s",
        baseline=f"{p}.naive",
    )
    results.figure(
        f"cpu.relay.{broker}",
        f"relay -> {broker}: CPU per 1,000",
        "s",
        better="lower",
        baseline=f"cpu.raw.{broker}",
    )
    results.figure(f"cpu.raw.{broker}", f"{base_label}: CPU per 1,000", "s", better="lower")
    results.figure(
        f"wal.{broker}",
        f"WAL per message (stage + relay -> {broker})",
        "B",
        better="lower",
        baseline=f"wal.{broker}.plain_row",
    )
    results.figure(
        f"wal.{broker}.plain_row", "WAL per plain row of the same shape", "B", better="lower"
    )
    results.figure(
        f"dead_tuples.{broker}", f"dead tuples per message ({broker})", "tuples", better="lower"
    )

    history_metadata = MetaData()
    history_tables = txmq.make_outbox_tables(history_metadata, prefix=f"{tables_prefix}_hist_")
    history_metadata.create_all(engine)
    add_history(engine, history_tables, group, topic, sizes.history, body)
    history = txmq.Producer(group=group, engine=engine, broker=adapter, tables=history_tables)
    naive = NaiveOutbox(database_url, f"{broker}_{suffix}")
    few = max(sizes.count // 20, 20)

    def on_empty_queue(run: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
        # A RabbitMQ queue holding earlier runs' messages slows publishing down, which would
        # favour whichever way ran first; Kafka's log depth does not matter.
        def measured() -> dict[str, float]:
            figures = run()
            if broker == "rabbitmq":
                adapter.purge_queue(topology.work_queue)
            return figures

        return measured

    def raw() -> dict[str, float]:
        if broker == "rabbitmq":
            rate = rabbitmq_raw.pipelined_confirms(url, topic, sizes.count, body)
        else:
            rate = kafka_raw.transactional(url, topic, sizes.count, body, sizes.batch)
        return {f"{p}.{base}": rate.per_second, f"cpu.raw.{broker}": rate.cpu_per_1000}

    def raw_second() -> dict[str, float]:
        if broker == "rabbitmq":
            rate = rabbitmq_raw.confirm_each(url, topic, few * 2, body)
        else:
            rate = kafka_raw.idempotent(url, topic, sizes.count, body, sizes.batch)
        return {f"{p}.{second}": rate.per_second}

    def naive_run() -> dict[str, float]:
        publish, close = _naive_publisher(broker, url, topic)
        try:
            return {f"{p}.naive": naive.run(topic, few, body, publish).per_second}
        finally:
            close()

    def empty_run() -> dict[str, float]:
        metadata = MetaData()
        tables = txmq.make_outbox_tables(
            metadata, prefix=f"{tables_prefix}_empty_{uuid.uuid4().hex[:6]}_"
        )
        metadata.create_all(engine)
        producer = txmq.Producer(group=group, engine=engine, broker=adapter, tables=tables)
        try:
            return {f"{p}.empty": relay_run(producer, topic, sizes.count, body).per_second}
        finally:
            producer.close()
            metadata.drop_all(engine)

    def delayed_run() -> dict[str, float]:
        metadata = MetaData()
        tables = txmq.make_outbox_tables(
            metadata, prefix=f"{tables_prefix}_delayed_{uuid.uuid4().hex[:6]}_"
        )
        metadata.create_all(engine)
        add_delayed(engine, tables, group, topic, sizes.delayed, body)
        producer = txmq.Producer(group=group, engine=engine, broker=adapter, tables=tables)
        try:
            rate = relay_run(producer, topic, sizes.count, body)
            assert producer.store.counts().get("DELAYED") == sizes.delayed
            return {f"{p}.delayed_waiting": rate.per_second}
        finally:
            producer.close()
            metadata.drop_all(engine)

    def history_run() -> dict[str, float]:
        name = history_tables.records.name
        engine.dispose()  # every backend's statistics reported: see settled_tuple_changes
        inserted, changed = database.settled_tuple_changes(engine, name, 0)
        wal_before = database.wal_position(engine)
        rate = relay_run(history, topic, sizes.count, body)
        wal = (database.wal_position(engine) - wal_before) / sizes.count
        engine.dispose()
        after = database.settled_tuple_changes(engine, name, inserted + sizes.count)
        plain_wal = database.plain_insert_wal(engine, sizes.count, body)
        return {
            f"{p}.history": rate.per_second,
            f"{p}.history_vs_naive": rate.per_second,
            f"cpu.relay.{broker}": rate.cpu_per_1000,
            f"wal.{broker}": wal,
            f"wal.{broker}.plain_row": plain_wal,
            f"dead_tuples.{broker}": (after[1] - changed) / sizes.count,
        }

    try:
        alternate(
            sizes.rounds,
            {
                "raw": on_empty_queue(raw),
                "raw (second way)": on_empty_queue(raw_second),
                "naive outbox": on_empty_queue(naive_run),
                "relay, empty outbox": on_empty_queue(empty_run),
                "relay, delayed rows waiting": on_empty_queue(delayed_run),
                "relay, history": on_empty_queue(history_run),
            },
            results,
        )
    finally:
        history.close()
        naive.drop()
        history_metadata.drop_all(engine)
        remove_topologies(broker, url, [topology], suffix)
        adapter.close()
