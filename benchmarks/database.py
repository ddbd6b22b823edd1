"""PostgreSQL's side: the single-row commit rate, staging cost, WAL and dead tuples.

* PostgreSQL's single-row commit rate: one INSERT + COMMIT per row on one raw psycopg
  connection (the floor of a consumer that writes one inbox row per message).
* Staging cost: a one-row business transaction plus ``Producer.stage`` of one message,
  against the same transaction plus one plain INSERT of the same row into a plain table
  with the outbox's columns, primary key and unique id (the floor: one more statement);
  and ``AsyncProducer.stage`` in an ``AsyncSession`` against ``Producer.stage``
  (:mod:`benchmarks.aio`).
* WAL bytes per message (``pg_current_wal_lsn()`` before and after) and dead tuples per
  message (updates plus deletes counted on the outbox table). WAL is counted for the whole
  server, so other work on a shared server adds to it: the minimum over rounds is the
  estimate.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import txmq
from benchmarks import aio
from benchmarks.harness import Results, Target, alternate


def plain_tables(metadata: MetaData) -> tuple[Table, Table]:
    """The business table (``bench_orders``) and a plain table shaped like an outbox row."""
    orders = Table(
        "bench_orders",
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("note", String(50)),
    )
    rows = Table(
        "bench_plain_row",
        metadata,
        Column("seq", BigInteger, primary_key=True, autoincrement=True),
        Column("id", String(64), nullable=False, unique=True),
        Column("producer_group", String(120), nullable=False),
        Column("topic", String(120), nullable=False),
        Column("key", String(255)),
        Column("headers", Text, nullable=False),
        Column("body", LargeBinary, nullable=False),
        Column("state", String(16), nullable=False),
        Column("check_count", Integer, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )
    return orders, rows


def plain_row(body: bytes) -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "id": uuid.uuid4().hex,
        "producer_group": "bench",
        "topic": "bench.stage",
        "key": None,
        "headers": "{}",
        "body": body,
        "state": "READY",
        "check_count": 0,
        "created_at": now,
        "updated_at": now,
    }


def driver_dsn(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (for the raw psycopg baselines)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def single_row_commits(url: str, count: int) -> float:
    """Commits/s of one single-row INSERT + COMMIT after another, on one raw connection."""
    table = f"bench_commit_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(driver_dsn(url)) as connection:
        connection.execute(f"CREATE TABLE {table} (id bigserial primary key, v varchar(80))")
        connection.commit()
        started = time.perf_counter()
        for i in range(count):
            connection.execute(f"INSERT INTO {table} (v) VALUES (%s)", (str(i),))
            connection.commit()
        elapsed = time.perf_counter() - started
        connection.execute(f"DROP TABLE {table}")
        connection.commit()
    return count / elapsed


def inbox_batch_rows(engine: Engine, count: int, batch: int) -> float:
    """Rows/s of raw psycopg inbox writes, ``batch`` rows a transaction: one INSERT of the
    batch (unnest over arrays, ON CONFLICT DO NOTHING RETURNING the key, as txmq's inbox
    does) and a COMMIT, into a table shaped like the inbox. What any consumer that writes
    an inbox row per message reaches at most on this database."""
    table = txmq.make_inbox_table(MetaData(), f"bench_inbox_{uuid.uuid4().hex[:8]}")
    insert_batch = (
        f"INSERT INTO {table.name} (consumer_group, message_key, topic, status, processed_at) "
        "SELECT %s, u.k, u.t, 'done', %s FROM unnest(%s::varchar(96)[], %s::varchar(120)[]) "
        "AS u(k, t) ON CONFLICT DO NOTHING RETURNING message_key"
    )
    table.create(engine)  # the inbox's own definition: its columns, key and indexes
    url = engine.url.render_as_string(hide_password=False)
    with psycopg.connect(driver_dsn(url)) as connection:
        keys = [txmq.Message("t", b"").id for _ in range(count)]
        started = time.perf_counter()
        for start in range(0, count, batch):
            chunk = keys[start : start + batch]
            connection.execute(
                insert_batch, ("g", datetime.now(UTC), chunk, ["bench.evt"] * len(chunk))
            ).fetchall()
            connection.commit()
        elapsed = time.perf_counter() - started
        connection.execute(f"DROP TABLE {table.name}")
        connection.commit()
    return count / elapsed


def business_transactions(
    engine: Engine, orders: Table, count: int, extra: Callable[[Session], None]
) -> float:
    """Microseconds per one-row business transaction that also runs ``extra``."""
    started = time.perf_counter()
    for i in range(count):
        with Session(engine) as session, session.begin():
            session.execute(insert(orders).values(note=f"order {i}"))
            extra(session)
    return (time.perf_counter() - started) / count * 1e6


def staging_section(results: Results, engine: Engine, count: int, body: bytes, rounds: int) -> None:
    """Measure the staging cost into ``results``: a business transaction with ``stage()``
    against the same transaction with one plain INSERT instead (target: <= 1.1x)."""
    results.figure(
        "staging.plain_insert", "business tx + one plain INSERT", "us/tx", better="lower"
    )
    results.figure(
        "staging.stage",
        "business tx + stage()",
        "us/tx",
        better="lower",
        baseline="staging.plain_insert",
        target=Target(1.1, "ratio"),
    )
    results.figure(
        "staging.async_plain_insert", "AsyncSession tx + one plain INSERT", "us/tx", better="lower"
    )
    results.figure(
        "staging.async_stage",
        "AsyncSession tx + await AsyncProducer.stage()",
        "us/tx",
        better="lower",
        baseline="staging.async_plain_insert",
        target=Target(1.1, "ratio"),
    )
    results.figure(
        "staging.async_vs_sync",
        "AsyncSession tx + await AsyncProducer.stage(), against the synchronous stage()",
        "us/tx",
        better="lower",
        baseline="staging.stage",
    )
    orders, rows = plain_tables(MetaData())
    producer = txmq.Producer(group="bench-stage", engine=engine)

    def stage(session: Session) -> None:
        producer.stage(session, txmq.Message("bench.stage", body))

    def plain_insert(session: Session) -> None:
        session.execute(insert(rows).values(plain_row(body)))

    def async_stage() -> dict[str, float]:
        cost = aio.async_business_transactions(engine, orders, count, body)
        return {"staging.async_stage": cost, "staging.async_vs_sync": cost}

    try:
        alternate(
            rounds,
            {
                "stage": lambda: {
                    "staging.stage": business_transactions(engine, orders, count, stage)
                },
                "plain insert": lambda: {
                    "staging.plain_insert": business_transactions(
                        engine, orders, count, plain_insert
                    )
                },
                "async stage": async_stage,
                "async plain insert": lambda: {
                    "staging.async_plain_insert": aio.async_business_transactions(
                        engine, orders, count, body, plain=(rows, lambda: plain_row(body))
                    )
                },
            },
            results,
        )
    finally:
        producer.close()


def wal_position(engine: Engine) -> int:
    """The WAL *insert* position, in bytes. Not the write position (``pg_current_wal_lsn``):
    with ``synchronous_commit=off`` that one lags by whatever the WAL writer has not yet
    written out, and may not move at all across a small transaction."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                text("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')")
            ).scalar_one()
        )


def plain_insert_wal(engine: Engine, count: int, body: bytes) -> float:
    """WAL bytes per plain row like an outbox row, inserted 1000 per transaction."""
    _orders, rows = plain_tables(MetaData())
    before = wal_position(engine)
    with engine.begin() as connection:
        for start in range(0, count, 1000):
            connection.execute(
                insert(rows), [plain_row(body) for _ in range(min(1000, count - start))]
            )
    return (wal_position(engine) - before) / count


def tuple_changes(engine: Engine, table: str) -> tuple[int, int]:
    """(inserted, updated + deleted) rows of ``table`` as the statistics have them."""
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT n_tup_ins, n_tup_upd + n_tup_del FROM pg_stat_user_tables"
                " WHERE relname = :name"
            ),
            {"name": table},
        ).one()
    return int(row[0]), int(row[1])


def settled_tuple_changes(engine: Engine, table: str, inserted_at_least: int) -> tuple[int, int]:
    """:func:`tuple_changes` once the statistics show ``inserted_at_least`` inserts and stop
    moving (backends report their counts up to a second after a transaction ends, and at
    once when their connection closes)."""
    deadline = time.monotonic() + 15
    last = tuple_changes(engine, table)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = tuple_changes(engine, table)
        if now == last and now[0] >= inserted_at_least:
            return now
        last = now
    return last
