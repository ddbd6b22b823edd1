"""A database without txmq's tables: SchemaMissing, which says how to create them.

On PostgreSQL (SQLSTATE 42P01) and SQLite ("no such table"), on every path that runs txmq's
SQL: the producer, the relay, the check-back, the consumer's inbox and the command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, Table, create_engine, func, select
from sqlalchemy.orm import Session

import txmq
from txmq.consumer import Consumer, RetryPolicy, make_inbox_table
from txmq.outbox import CheckBackPolicy, Producer, make_outbox_tables
from txmq.states import LocalTransactionState
from txmq.testing import wait_for

pytestmark = pytest.mark.database

HINT = "txmq.create_schema"


@dataclass
class Schemaless:
    """A database with the application's table but none of txmq's (under ``prefix``)."""

    url: str
    engine: Engine
    orders: Table
    prefix: str

    def producer(self, broker: txmq.Adapter | None = None, **kw: object) -> Producer:
        return Producer(
            group=f"g-{self.prefix.strip('_')}",
            engine=self.engine,
            broker=broker,
            tables=make_outbox_tables(MetaData(), prefix=self.prefix),
            **kw,  # type: ignore[arg-type]
        )

    def orders_count(self) -> int:
        with self.engine.connect() as connection:
            count = connection.execute(select(func.count()).select_from(self.orders))
            return int(count.scalar_one())


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Schemaless]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.db'}"
    else:
        url = request.getfixturevalue("database_url")
    prefix = f"m{uuid.uuid4().hex[:8]}_"
    engine = create_engine(url)
    metadata = MetaData()
    orders = Table(f"{prefix}orders", metadata, Column("id", Integer, primary_key=True))
    metadata.create_all(engine)
    yield Schemaless(url, engine, orders, prefix)
    metadata.drop_all(engine)
    engine.dispose()


def assert_schema_missing(error: pytest.ExceptionInfo[txmq.SchemaMissing], table: str) -> None:
    text = str(error.value)
    assert table in text
    assert HINT in text
    assert "txmq schema create" in text
    assert error.value.__cause__ is not None  # the database's own error is kept


def test_stage_raises_schema_missing_and_the_business_row_is_not_committed(
    db: Schemaless,
) -> None:
    producer = db.producer()

    def order() -> None:
        with Session(db.engine) as session, session.begin():
            session.execute(db.orders.insert().values(id=1))
            producer.stage(session, txmq.Message("orders.created", b"1"))

    with pytest.raises(txmq.SchemaMissing) as error:
        order()
    assert_schema_missing(error, f"{db.prefix}outbox")
    assert db.orders_count() == 0


def test_half_messages_raise_schema_missing_before_the_local_transaction(
    db: Schemaless,
) -> None:
    producer = db.producer()
    ran: list[str] = []

    def executor(message: txmq.Message, arg: None) -> LocalTransactionState:
        ran.append(message.id)
        return LocalTransactionState.COMMIT

    with pytest.raises(txmq.SchemaMissing) as error:
        producer.send_in_transaction(txmq.Message("orders.created", b"1"), executor, None)
    assert_schema_missing(error, f"{db.prefix}outbox")
    with pytest.raises(txmq.SchemaMissing):
        producer.send_in_local_transaction(
            txmq.Message("orders.created", b"2"), lambda session: ran.append("local")
        )
    assert ran == []


def test_check_back_raises_schema_missing(db: Schemaless) -> None:
    producer = db.producer(check_policy=CheckBackPolicy(immunity=timedelta(0)))
    with pytest.raises(txmq.SchemaMissing) as error:
        producer.check_back_once()
    assert_schema_missing(error, f"{db.prefix}outbox")


@pytest.mark.broker
def test_relay_connect_and_run_once_raise_schema_missing(
    db: Schemaless, broker: txmq.Adapter
) -> None:
    relay = db.producer(broker).relay(concurrency=1)
    try:
        with pytest.raises(txmq.SchemaMissing) as error:
            relay.connect()
        assert_schema_missing(error, f"{db.prefix}outbox")
        with pytest.raises(txmq.SchemaMissing):
            relay.run_once()
    finally:
        relay.stop()


def test_purge_inbox_raises_schema_missing(db: Schemaless) -> None:
    inbox = make_inbox_table(MetaData(), name=f"{db.prefix}inbox")
    with pytest.raises(txmq.SchemaMissing) as error:
        txmq.purge_inbox(db.engine, timedelta(days=1), inbox=inbox)
    assert_schema_missing(error, f"{db.prefix}inbox")


@pytest.mark.broker
@pytest.mark.slow
def test_consumer_without_its_inbox_keeps_the_message(db: Schemaless, broker: txmq.Adapter) -> None:
    """Not the message's fault: it is neither retried nor dead-lettered, the consumer stops
    on the fatal error (health says why), and the message is applied once the inbox exists."""
    suffix = uuid.uuid4().hex[:10]
    group, topic = f"g{suffix}", f"t{suffix}.evt"
    inbox = make_inbox_table(MetaData(), name=f"{db.prefix}inbox")
    applied: list[str] = []

    def consumer() -> Consumer:
        c = Consumer(
            broker=broker,
            engine=db.engine,
            group=group,
            inbox=inbox,
            retry=RetryPolicy(delays=(0.5,)),
            poll_interval=0.2,
        )
        c.add_handler(topic, lambda message, session: applied.append(message.id))
        return c

    def stopped_on_schema_missing(stopping: Consumer) -> bool:
        return any(isinstance(loop.fatal, txmq.SchemaMissing) for loop in stopping.health().loops)

    message = txmq.Message(topic, b"order 1")
    try:
        refusing = consumer()
        with refusing:
            refusing.start()
            with broker.publisher() as publisher:
                assert all(o.ok for o in publisher.publish([message]))
            wait_for(lambda: stopped_on_schema_missing(refusing), what="a stop on SchemaMissing")
            assert not refusing.healthy()
        assert applied == []
        assert (refusing.stats.retried, refusing.stats.dead_lettered) == (0, 0)
        txmq.create_schema(db.engine, inbox)
        working = consumer()
        with working:
            working.start()
            wait_for(lambda: message.id in applied, what="the message to be applied")
        with txmq.DeadLetters(broker, group=group, topic=topic) as dead_letters:
            assert dead_letters.list() == []
    finally:
        inbox.drop(db.engine, checkfirst=True)


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "txmq.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_cli_outbox_status_says_schema_missing_in_one_line(db: Schemaless) -> None:
    done = run_cli("outbox", "status", "--database", db.url, "--prefix", db.prefix)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: txmq's tables are missing")
    assert HINT in lines[0]


@pytest.mark.broker
def test_cli_relay_on_a_schemaless_database_exits_1_with_one_line(
    db: Schemaless, broker_url: str
) -> None:
    done = run_cli(
        "outbox",
        "relay",
        "--all-groups",
        "--database",
        db.url,
        "--prefix",
        db.prefix,
        "--broker",
        broker_url,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: txmq's tables are missing")
    assert HINT in lines[0]


def test_cli_schema_create_makes_the_tables_the_error_asks_for(db: Schemaless) -> None:
    inbox = f"{db.prefix}inbox"
    created = MetaData()
    make_outbox_tables(created, prefix=db.prefix)
    make_inbox_table(created, name=inbox)
    try:
        done = run_cli(
            "schema", "create", "--database", db.url, "--prefix", db.prefix, "--inbox", inbox
        )
        assert done.returncode == 0, done.stderr
        status = run_cli("outbox", "status", "--database", db.url, "--prefix", db.prefix)
        assert status.returncode == 0, status.stderr
        db.producer().store.check_schema()
        txmq.purge_inbox(db.engine, timedelta(days=1), inbox=created.tables[inbox])
    finally:
        created.drop_all(db.engine, checkfirst=True)
