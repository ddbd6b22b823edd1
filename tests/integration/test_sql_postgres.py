"""The SQL layer on real PostgreSQL: the direct-cursor path (both ``%`` parameter styles),
insert-or-detect-duplicate with ON CONFLICT and unnest, the relays' LISTEN waiter, and the
outbox and inbox in a schema of their own."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import txmq
from txmq.consumer.inbox import Inbox
from txmq.errors import DatabaseUnavailable
from txmq.schema_check import schema_differences
from txmq.sql.dialect import DirectStatement, UniqueInsert, dialect_of
from txmq.sql.tables import NOTIFY_CHANNEL, make_inbox_table, make_outbox_tables

pytestmark = pytest.mark.database


@pytest.fixture(params=["pyformat", "format"])
def engine(request: pytest.FixtureRequest, database_url: str) -> Iterator[Engine]:
    """psycopg takes both ``%(name)s`` and ``%s``: the direct path compiles for either."""
    engine = create_engine(database_url, paramstyle=request.param, hide_parameters=True)
    yield engine
    engine.dispose()


@pytest.fixture
def keyed(engine: Engine) -> Iterator[Table]:
    table = Table(
        f"keyed_{uuid.uuid4().hex[:8]}",
        MetaData(),
        Column("k", String(20), primary_key=True),
        Column("v", String(20), nullable=False),
        Column("at", DateTime(timezone=True), nullable=True),
    )
    table.create(engine)
    yield table
    table.drop(engine)


def _cursor_statements(engine: Engine, table: Table) -> list[str]:
    """The statements on ``table`` that SQLAlchemy's engine events see."""
    seen: list[str] = []
    event.listen(
        engine,
        "before_cursor_execute",
        lambda *args: seen.append(args[2]) if table.name in args[2] else None,
    )
    return seen


def test_a_direct_statement_runs_on_the_cursor_in_the_connection_transaction(
    engine: Engine, keyed: Table
) -> None:
    assert dialect_of(engine.dialect).direct_cursor
    seen = _cursor_statements(engine, keyed)
    stage = DirectStatement(insert(keyed), column_keys=("k", "v"))
    claim = DirectStatement(
        select(keyed.c.k, keyed.c.v)
        .where(dialect_of(engine.dialect).in_values(keyed.c.k, "ks"))
        .order_by(keyed.c.k)
    )
    with engine.connect() as connection:
        with connection.begin():
            assert stage.run(connection, {"k": "a", "v": "x"}) is None
            assert stage.run(connection, [{"k": "b", "v": "y"}, {"k": "c", "v": "z"}]) is None
            rows = claim.run(connection, {"ks": ["a", "c", "q"]})
            assert [tuple(r) for r in rows or ()] == [("a", "x"), ("c", "z")]
            assert seen == []  # engine events do not see the direct path
            connection.rollback()  # the rows were in this transaction only
        assert connection.execute(select(keyed)).all() == []


def test_a_driver_error_on_the_direct_path_is_sqlalchemys_without_its_parameters(
    engine: Engine, keyed: Table
) -> None:
    stage = DirectStatement(insert(keyed), column_keys=("k", "v"))
    with engine.begin() as connection:
        stage.run(connection, {"k": "a", "v": "secret-value"})
    with pytest.raises(IntegrityError) as caught, engine.begin() as connection:
        stage.run(connection, {"k": "a", "v": "secret-value"})
    assert "secret-value" not in str(caught.value)
    assert caught.value.orig is not None
    assert type(caught.value.orig).__module__.startswith("psycopg")


def test_insert_or_detect_duplicate_on_postgresql(engine: Engine, keyed: Table) -> None:
    unique = UniqueInsert(keyed, key=keyed.c.k, columns=("k", "v", "at"))
    at = datetime.now(UTC)
    with engine.begin() as connection:
        assert unique.one(connection, {"k": "a", "v": "first", "at": at})
        assert not unique.one(connection, {"k": "a", "v": "second", "at": at})
        # The transaction is not aborted by the duplicate: it goes on and commits.
        new = unique.many(
            connection,
            [{"k": k, "v": f"v{k}"} for k in ("a", "b", "c", "b")],
            shared={"at": at},
        )
        assert new == {"b", "c"}
        assert unique.many(connection, [{"k": "d", "v": "vd"}], shared={"at": at}) == {"d"}
    with engine.connect() as connection:
        rows = connection.execute(select(keyed.c.k, keyed.c.v).order_by(keyed.c.k)).all()
    assert [tuple(r) for r in rows] == [("a", "first"), ("b", "vb"), ("c", "vc"), ("d", "vd")]


# -- the LISTEN waiter ---------------------------------------------------------------------


def _waits(waiter_wait: Callable[[float], None], seconds: float) -> threading.Thread:
    thread = threading.Thread(target=waiter_wait, args=(seconds,), daemon=True)
    thread.start()
    return thread


def test_the_waiter_wakes_on_notify_and_on_stop(database_url: str) -> None:
    engine = create_engine(database_url)
    stop = threading.Event()
    waiter = dialect_of(engine.dialect).waiter(engine, stop)
    try:
        waiter.wait(0)  # opens the LISTEN connection
        woken = _waits(waiter.wait, 600)
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
        woken.join(timeout=60)
        assert not woken.is_alive()
        stopped = _waits(waiter.wait, 600)
        stop.set()
        stopped.join(timeout=60)
        assert not stopped.is_alive()
    finally:
        waiter.close()
        engine.dispose()


def test_notifications_queued_while_busy_wake_the_waiter_once(database_url: str) -> None:
    # A relay busy with a pass gets one NOTIFY per staging transaction committed meanwhile;
    # each one left queued woke it again for a pass that found nothing.
    engine = create_engine(database_url)
    waiter = dialect_of(engine.dialect).waiter(engine, threading.Event())
    try:
        waiter.wait(0)  # opens the LISTEN connection
        for _ in range(20):
            with engine.begin() as connection:
                connection.execute(
                    text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL}
                )
        # The server sends every notification signalled so far before it answers a query
        # on the listening connection: all 20 are with the client now.
        waiter._driver.execute("SELECT 1")  # type: ignore[attr-defined]
        waiter.wait(60)  # returns at once: there is work
        started = time.monotonic()
        waiter.wait(0.5)
        assert time.monotonic() - started >= 0.45, "woken again by an earlier notification"
    finally:
        waiter.close()
        engine.dispose()


def test_the_first_wait_on_a_new_listen_connection_returns_at_once(database_url: str) -> None:
    """A record committed before the LISTEN began sends its NOTIFY to nobody: the waiter
    that waited out its poll interval left it unpublished that long (60 s in
    ``test_relay_wakes_up_on_notify``, which failed when the record was staged between a
    lane's first claim and its first wait). Having just begun to listen, the waiter returns
    at once, so that a pass looks for what came before."""
    engine = create_engine(database_url)
    waiter = dialect_of(engine.dialect).waiter(engine, threading.Event())
    try:
        started = time.monotonic()
        waiter.wait(30)
        assert time.monotonic() - started < 5
        started = time.monotonic()
        waiter.wait(0.5)  # listening now: this one waits
        assert time.monotonic() - started >= 0.45
        waiter.close()  # as after a lost connection: the next wait listens anew
        started = time.monotonic()
        waiter.wait(30)
        assert time.monotonic() - started < 5
    finally:
        waiter.close()
        engine.dispose()


def test_the_waiter_reports_a_lost_listen_connection_and_listens_again(
    database_url: str,
) -> None:
    name = f"txmq-waiter-{uuid.uuid4().hex[:8]}"
    engine = create_engine(database_url, connect_args={"application_name": name})
    waiter = dialect_of(engine.dialect).waiter(engine, threading.Event())
    kill = text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = :name AND query LIKE 'LISTEN%'"
    )
    try:
        waiter.wait(0)
        with engine.begin() as connection:
            assert connection.execute(kill, {"name": name}).scalar() == 1
        with pytest.raises(DatabaseUnavailable, match="LISTEN connection lost"):
            waiter.wait(30)
        waiter.wait(0)  # listens again on a new connection
        with engine.begin() as connection:
            assert connection.execute(kill, {"name": name}).scalar() == 1
    finally:
        waiter.close()
        engine.dispose()


# -- tables in a schema ------------------------------------------------------------------


def test_the_outbox_and_the_inbox_work_in_a_schema_of_their_own(
    txmq_engine: Engine, txmq_memory_url: str
) -> None:
    engine = txmq_engine
    with engine.begin() as connection:
        connection.execute(text("CREATE SCHEMA billing"))
    metadata = MetaData()
    outbox = make_outbox_tables(metadata, prefix="shop_", schema="billing")
    inbox_table = make_inbox_table(metadata, prefix="shop_", schema="billing")
    txmq.create_schema(engine, outbox, inbox_table)
    assert schema_differences(engine, [outbox, inbox_table]) == []

    broker = txmq.connect(txmq_memory_url)
    broker.declare([txmq.Topology("audit", "t")])
    producer = txmq.Producer(group="shop", engine=engine, broker=broker, tables=outbox)
    stop = threading.Event()
    waiter = dialect_of(engine.dialect).waiter(engine, stop)
    try:
        waiter.wait(0)
        woken = _waits(waiter.wait, 600)
        with Session(engine) as session, session.begin():
            producer.stage(session, txmq.Message("t", b"in a schema"))
        woken.join(timeout=60)  # the schema's trigger notified the relays' channel
        assert not woken.is_alive()
    finally:
        waiter.close()
    assert producer.relay().drain() == 1
    assert producer.store.counts() == {"SENT": 1}
    broker.close()

    inbox = Inbox(inbox_table, "audit")
    with engine.begin() as connection:
        assert inbox.claim(connection, "m1", "t")
        assert not inbox.claim(connection, "m1", "t")
        assert inbox.claim_many(connection, [("m1", "t"), ("m2", "t")]) == {"m2"}
        # A batch of one topic sends it once; one of several keeps each row's own.
        assert inbox.claim_many(connection, [("m3", "t"), ("m4", "u"), ("m2", "t")]) == {
            "m3",
            "m4",
        }
        c = inbox_table.c
        topics = dict(connection.execute(select(c.message_key, c.topic)).tuples().all())
        assert topics == {"m1": "t", "m2": "t", "m3": "t", "m4": "u"}
    assert txmq.purge_inbox(engine, timedelta(0), inbox=inbox_table) == 4
