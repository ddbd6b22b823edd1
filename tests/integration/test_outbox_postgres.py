"""Producer side on real PostgreSQL: locking, self-answering markers, concurrent relays."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    Table,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import txmq
from txmq.adapters.memory.adapter import InMemoryBroker
from txmq.outbox import CheckBackPolicy, Producer, make_outbox_tables
from txmq.outbox.store import utcnow
from txmq.states import LocalTransactionState, RecordState

pytestmark = pytest.mark.database

NOW = timedelta(0)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url, pool_size=10)
    yield engine
    engine.dispose()


@pytest.fixture
def metadata(engine: Engine) -> Iterator[MetaData]:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    metadata = MetaData()
    Table(f"{prefix}orders", metadata, Column("id", Integer, primary_key=True))
    make_outbox_tables(metadata, prefix=prefix)
    metadata.create_all(engine)
    yield metadata
    metadata.drop_all(engine)


def orders_table(metadata: MetaData) -> Table:
    return next(t for name, t in metadata.tables.items() if name.endswith("_orders"))


def producer_for(
    engine: Engine, metadata: MetaData, broker: txmq.Adapter, **kw: object
) -> Producer:
    prefix = orders_table(metadata).name.removesuffix("orders")
    return Producer(
        group="orders",
        engine=engine,
        broker=broker,
        tables=make_outbox_tables(metadata, prefix=prefix),
        **kw,  # type: ignore[arg-type]
    )


def run_in_thread(target: object) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def wrapper() -> None:
        try:
            result.append(target())  # type: ignore[operator]
        except BaseException as exc:  # handed to the test thread
            result.append(exc)

    thread = threading.Thread(target=wrapper, daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("local_outcome", ["commit", "raise"])
def test_check_back_waits_for_a_running_local_transaction(
    engine: Engine, metadata: MetaData, local_outcome: str
) -> None:
    producer = producer_for(
        engine, metadata, InMemoryBroker(), check_policy=CheckBackPolicy(immunity=NOW)
    )
    orders = orders_table(metadata)
    inside, release = threading.Event(), threading.Event()
    message = txmq.Message("orders.created", b"x")

    def work(session: Session) -> None:
        session.execute(insert(orders).values(id=1))
        inside.set()
        assert release.wait(30)
        if local_outcome == "raise":
            raise RuntimeError("business rule")

    sender, sent = run_in_thread(lambda: producer.send_in_local_transaction(message, work))
    assert inside.wait(10)
    checker, checked = run_in_thread(producer.check_back_once)
    # The check-back's ROLLBACK marker insert is blocked by the running transaction's key.
    checker.join(1.0)
    assert checker.is_alive(), "check-back decided while the local transaction was running"
    release.set()
    sender.join(10)
    checker.join(10)
    assert checked == [1]
    expected = RecordState.READY if local_outcome == "commit" else RecordState.ROLLED_BACK
    assert producer.store.get(message.id).state is expected
    with engine.connect() as connection:
        rows = list(connection.execute(select(orders.c.id)))
    assert rows == ([(1,)] if local_outcome == "commit" else [])
    if local_outcome == "raise":
        assert isinstance(sent[0], RuntimeError)


def test_local_transaction_killed_midway_resolves_as_rollback(
    engine: Engine, metadata: MetaData, database_url: str
) -> None:
    orders = orders_table(metadata)
    prefix = orders.name.removesuffix("orders")
    script = textwrap.dedent(
        f"""
        import os, signal
        from datetime import timedelta
        from sqlalchemy import MetaData, create_engine, insert, Table, Column, Integer
        import txmq
        engine = create_engine({database_url!r})
        metadata = MetaData()
        orders = Table({orders.name!r}, metadata, Column("id", Integer, primary_key=True))
        producer = txmq.Producer(group="orders", engine=engine,
                                 tables=txmq.make_outbox_tables(metadata, prefix={prefix!r}))
        def work(session):
            session.execute(insert(orders).values(id=7))
            print(producer.store.list(txmq.RecordState.PREPARED)[0].message.id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        producer.send_in_local_transaction(
            txmq.Message("orders.created", b"x"), work, immunity=timedelta(0))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == -9, done.stderr
    message_id = done.stdout.strip()
    producer = producer_for(
        engine, metadata, InMemoryBroker(), check_policy=CheckBackPolicy(immunity=NOW)
    )
    # No checker is configured: the marker alone answers.
    assert producer.store.get(message_id).state is RecordState.PREPARED
    assert producer.check_back_once() == 1
    assert producer.store.get(message_id).state is RecordState.ROLLED_BACK
    with engine.connect() as connection:
        assert list(connection.execute(select(orders.c.id))) == []


def test_a_running_executor_is_not_checked_back(engine: Engine, metadata: MetaData) -> None:
    """The half record is row-locked while the executor runs: check-backs skip it."""
    calls: list[str] = []
    producer = producer_for(
        engine,
        metadata,
        InMemoryBroker(),
        checker=lambda m, c: calls.append(m.id) or LocalTransactionState.ROLLBACK,
        check_policy=CheckBackPolicy(immunity=NOW),
    )
    inside, release = threading.Event(), threading.Event()

    def executor(message: txmq.Message, arg: None) -> LocalTransactionState:
        inside.set()
        assert release.wait(30)
        return LocalTransactionState.COMMIT

    sender, sent = run_in_thread(
        lambda: producer.send_in_transaction(txmq.Message("t", b"x"), executor, None)
    )
    assert inside.wait(10)
    assert producer.check_back_once() == 0
    release.set()
    sender.join(10)
    assert calls == []
    result = sent[0]
    assert isinstance(result, txmq.SendResult)
    assert producer.store.get(result.message_id).state is RecordState.READY


def test_two_relays_and_two_check_backs_publish_each_message_once_in_key_order(
    engine: Engine, metadata: MetaData
) -> None:
    broker = InMemoryBroker()
    broker.declare([txmq.Topology("audit", "orders.created")])
    producer = producer_for(
        engine,
        metadata,
        broker,
        checker=lambda m, c: LocalTransactionState.COMMIT,
        check_policy=CheckBackPolicy(immunity=NOW),
    )
    keys = [f"k{i}" for i in range(10)]
    with Session(engine) as session, session.begin():
        producer.stage(
            session,
            *(
                txmq.Message("orders.created", str(i).encode(), key=keys[i % 10])
                for i in range(1000)
            ),
        )
    half = [
        producer.send_in_transaction(
            txmq.Message("orders.created", b"half", key="half"),
            lambda m, a: LocalTransactionState.UNKNOWN,
            None,
        ).message_id
        for _ in range(50)
    ]
    relays = [producer.relay(batch_size=37, poll_interval=0.05) for _ in range(2)]
    stop = threading.Event()

    def check_backs() -> None:
        while not stop.is_set() and producer.check_back_once(limit=7):
            pass

    workers = [threading.Thread(target=check_backs) for _ in range(2)]
    for worker in workers:
        worker.start()
    for relay in relays:
        relay.start()
    deadline = threading.Event()
    for _ in range(300):
        if producer.store.counts().get("SENT", 0) == 1050 or deadline.wait(0.1):
            break
    stop.set()
    for relay in relays:
        relay.stop()
    for worker in workers:
        worker.join(10)
    delivered = broker.messages("audit.orders.created")
    ids = [m.id for m in delivered]
    assert len(ids) == 1050
    assert len(set(ids)) == 1050, "a message was published twice without a crash"
    assert set(half) <= set(ids)
    by_key: dict[str | None, list[int]] = defaultdict(list)
    for m in delivered:
        if m.key != "half":
            by_key[m.key].append(int(m.body))
    for key, bodies in by_key.items():
        assert bodies == sorted(bodies), f"key {key} out of order"


def test_relay_wakes_up_on_notify(engine: Engine, metadata: MetaData) -> None:
    broker = InMemoryBroker()
    broker.declare([txmq.Topology("audit", "t")])
    producer = producer_for(engine, metadata, broker)
    relay = producer.relay(poll_interval=60.0)  # only a NOTIFY can wake it in time

    def delivered(count: int) -> bool:
        deadline = time.monotonic() + 10
        while len(broker.messages("audit.t")) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(broker.messages("audit.t")) == count

    relay.start()
    try:
        for n in (1, 2):
            # After the first delivery every lane is idle in its 60 s wait.
            with Session(engine) as session, session.begin():
                producer.stage(session, txmq.Message("t", f"wake {n}".encode()))
            assert delivered(n), f"message {n} not relayed within 10 s"
    finally:
        relay.stop()


def test_relay_crash_between_confirm_and_mark_republishes_the_same_id(
    engine: Engine, metadata: MetaData
) -> None:
    broker = InMemoryBroker()
    broker.declare([txmq.Topology("audit", "t")])
    producer = producer_for(engine, metadata, broker)
    with Session(engine) as session, session.begin():
        producer.stage(session, txmq.Message("t", b"once"))
    relay = producer.relay()
    original = producer.store.mark_sent

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("relay killed after the broker confirmed")

    producer.store.mark_sent = crash  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        relay.run_once()
    producer.store.mark_sent = original  # type: ignore[method-assign]
    assert relay.drain() == 1
    delivered = broker.messages("audit.t")
    assert len(delivered) == 2
    assert delivered[0].id == delivered[1].id


def test_zero_retention_relay_deletes_what_the_broker_confirmed(
    engine: Engine, metadata: MetaData
) -> None:
    broker = InMemoryBroker()
    broker.declare([txmq.Topology("audit", "t")])
    producer = producer_for(engine, metadata, broker)
    with Session(engine) as session, session.begin():
        producer.stage(session, *(txmq.Message("t", str(i).encode()) for i in range(300)))
    assert producer.relay(retention=timedelta(0), batch_size=100).drain() == 300
    # Two lanes publish their batches side by side: unkeyed messages have no order to keep.
    assert sorted(int(m.body) for m in broker.messages("audit.t")) == list(range(300))
    assert producer.store.counts() == {}


def test_claim_and_mark_read_only_the_batch_when_statistics_are_stale(
    engine: Engine, metadata: MetaData
) -> None:
    """A queue table's statistics lag its backlog. Never analysed, the table below looks
    empty to the planner, which then sorts every READY record to claim a batch and scans the
    table to mark it. The relay's transaction must use the indexes whatever the statistics
    say. (The plans are read with EXPLAIN in the claim's own transaction.)"""
    producer = producer_for(engine, metadata, InMemoryBroker())
    with Session(engine) as session, session.begin():
        producer.stage(session, *(txmq.Message("t", b"x") for _ in range(3000)))
    store = producer.store
    records = store.tables.records.name
    with engine.begin() as connection:
        claimed = store.claim_ready(connection, 100, group="orders")
        assert len(claimed) == 100
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(
            "EXPLAIN " + store._claim.sql(engine.dialect),
            {"group": "orders", "after": 0, "now": utcnow(), "limit": 100},
        )
        claim_plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute(
            "EXPLAIN " + store._mark_sent.sql(engine.dialect),
            {"seqs": [r.seq for r in claimed], "sent": "SENT", "now": utcnow()},
        )
        mark_plan = "\n".join(row[0] for row in cursor.fetchall())
    assert f"Index Scan using ix_{records}_ready on" in claim_plan, claim_plan
    assert "Sort" not in claim_plan, claim_plan
    assert f"Index Scan using {records}_pkey on" in mark_plan, mark_plan


def test_a_duplicate_message_id_fails_the_staging_transaction_as_an_integrity_error(
    engine: Engine, metadata: MetaData
) -> None:
    """Staging runs on the driver's cursor on PostgreSQL; its errors still arrive as
    SQLAlchemy's, and the caller's transaction rolls back whole."""
    producer = producer_for(engine, metadata, InMemoryBroker())
    orders = orders_table(metadata)
    first = txmq.Message("t", b"first")
    with Session(engine) as session, session.begin():
        producer.stage(session, first)

    def order_with_a_reused_id() -> None:
        with Session(engine) as session, session.begin():
            session.execute(insert(orders).values(id=1))
            producer.stage(session, txmq.Message("t", b"again", id=first.id))

    with pytest.raises(IntegrityError):
        order_with_a_reused_id()
    with engine.connect() as connection:
        assert connection.execute(select(orders.c.id)).all() == []
    assert [r.message.body for r in producer.store.list(RecordState.READY)] == [b"first"]


def test_a_record_committed_below_the_claim_floor_is_still_published(
    engine: Engine, metadata: MetaData
) -> None:
    """Through a backlog the relay claims above the last record it took. A transaction that
    staged first but commits last holds a lower sequence number than what the relay has
    claimed since; the claim that finds nothing above the floor looks from the start."""
    broker = InMemoryBroker()
    broker.declare([txmq.Topology("audit", "t")])
    producer = producer_for(engine, metadata, broker)
    relay = producer.relay(batch_size=2, concurrency=1)
    with Session(engine) as late:
        with late.begin():
            producer.stage(late, txmq.Message("t", b"late"))  # the lowest seq, not committed
            with Session(engine) as session, session.begin():
                producer.stage(session, *(txmq.Message("t", str(i).encode()) for i in range(4)))
            assert relay.run_once() == 2
            assert relay.run_once() == 2  # full batches: the floor is above "late" now
        assert relay.drain() == 1
    assert [m.body for m in broker.messages("audit.t")] == [b"0", b"1", b"2", b"3", b"late"]


def test_an_all_groups_relay_publishes_every_group_and_a_group_relay_only_its_own(
    engine: Engine, metadata: MetaData
) -> None:
    broker = InMemoryBroker()
    broker.declare([txmq.Topology("audit", "t")])
    producers = [
        producer_for(engine, metadata, broker),
        Producer(
            group="billing",
            engine=engine,
            broker=broker,
            tables=producer_for(engine, metadata, broker).tables,
        ),
    ]
    with Session(engine) as session, session.begin():
        for producer in producers:
            producer.stage(
                session,
                *(txmq.Message("t", f"{producer.group} {i}".encode(), key="k") for i in range(3)),
            )
    assert producers[0].relay(groups=["nobody"]).drain() == 0
    assert producers[0].store.group_counts() == {"orders": {"READY": 3}, "billing": {"READY": 3}}
    assert producers[0].relay(all_groups=True, batch_size=2).drain() == 6
    bodies = [m.body.decode() for m in broker.messages("audit.t")]
    for group in ("orders", "billing"):
        assert [b for b in bodies if b.startswith(group)] == [f"{group} {i}" for i in range(3)]
    with pytest.raises(txmq.ConfigurationError):
        txmq.Relay(broker, producers[0].store)
    with pytest.raises(txmq.ConfigurationError):
        txmq.Relay(broker, producers[0].store, groups=["orders"], all_groups=True)


def test_finding_the_groups_to_relay_reads_one_index_entry_per_group(
    engine: Engine, metadata: MetaData
) -> None:
    """An all-groups relay looks up which groups have READY records at each pass: one
    index probe per group, not a read of their backlogs, whatever the statistics say."""
    orders = producer_for(engine, metadata, InMemoryBroker())
    billing = Producer(group="billing", engine=engine, tables=orders.tables)
    with Session(engine) as session, session.begin():
        for producer in (orders, billing):
            producer.stage(session, *(txmq.Message("t", b"x") for _ in range(2000)))
    statements: list[tuple[str, object]] = []

    def record(conn: object, cursor: object, sql: str, params: object, *args: object) -> None:
        if "ORDER BY" in sql:
            statements.append((sql, params))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with engine.begin() as connection:
            assert orders.store.ready_groups(connection) == ["billing", "orders"]
            plans = [
                "\n".join(row[0] for row in connection.exec_driver_sql("EXPLAIN " + sql, params))  # type: ignore[arg-type]
                for sql, params in list(statements)
            ]
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(plans) == 3
    for plan in plans:
        assert plan.startswith("Limit"), plan
        assert "Index Only Scan using ix_" in plan, plan
        assert "Aggregate" not in plan, plan
        assert "Sort" not in plan, plan
