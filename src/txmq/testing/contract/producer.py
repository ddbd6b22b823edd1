"""The transactional producer, written once and run on every adapter (memory, RabbitMQ, Kafka).

A message is published if and only if its local transaction committed. The scenarios that
take ``api`` run on :class:`txmq.Producer` and on :class:`txmq.aio.AsyncProducer` (staging
in an ``AsyncSession``, ``async def`` executors and checkers, through asyncpg or aiosqlite);
those that kill a process run on the synchronous API only.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, Table, create_engine, insert
from sqlalchemy.orm import Session

import txmq
from txmq.outbox import CheckBackPolicy, Producer, make_outbox_tables
from txmq.states import LocalTransactionState, RecordState
from txmq.testing import wait_for
from txmq.testing.contract.apis import Api
from txmq.testing.contract.features import Features, requires

pytestmark = [pytest.mark.broker, pytest.mark.database]

COMMIT, ROLLBACK, UNKNOWN = (
    LocalTransactionState.COMMIT,
    LocalTransactionState.ROLLBACK,
    LocalTransactionState.UNKNOWN,
)
NOW = timedelta(0)
QUICK_CHECKS = CheckBackPolicy(immunity=NOW, interval=timedelta(milliseconds=1))


@pytest.fixture
def prefix() -> str:
    return f"p{uuid.uuid4().hex[:8]}_"


@pytest.fixture
def metadata(engine: Engine, prefix: str) -> Iterator[MetaData]:
    metadata = MetaData()
    Table(f"{prefix}orders", metadata, Column("id", Integer, primary_key=True))
    make_outbox_tables(metadata, prefix=prefix)
    metadata.create_all(engine)
    yield metadata
    metadata.drop_all(engine)


@pytest.fixture
def topic() -> str:
    return f"orders.created.{uuid.uuid4().hex[:8]}"


def declare(broker: txmq.Adapter, topic: str, *groups: str) -> None:
    broker.declare([txmq.Topology(group, topic) for group in groups])


def receive(
    broker: txmq.Adapter, group: str, topic: str, count: int, *, timeout: float = 30.0
) -> list[txmq.Message]:
    """Consume (and ack) until ``count`` messages arrived or ``timeout`` passed."""
    received: list[txmq.Message] = []
    sources = broker.sources_for([txmq.Topology(group, topic)])
    deadline = time.monotonic() + timeout
    with broker.subscribe(group, sources) as subscription:
        while len(received) < count and time.monotonic() < deadline:
            deliveries = subscription.poll(0.5)
            received.extend(d.message for d in deliveries if d.message is not None)
            subscription.ack(deliveries)
    return received


def nothing_more(broker: txmq.Adapter, group: str, topic: str, *, wait: float = 2.0) -> bool:
    """True if no message arrives within ``wait`` seconds (a bounded negative check)."""
    return receive(broker, group, topic, 1, timeout=wait) == []


def producer_for(
    engine: Engine,
    metadata: MetaData,
    prefix: str,
    broker: txmq.Adapter,
    api: Api | None = None,
    **kw: object,
) -> Producer:
    """The group's producer on ``api`` (an ``AsyncProducer`` used as a ``Producer``), or
    the synchronous one."""
    options: dict[str, object] = {
        "group": f"orders-{prefix.strip('_')}",
        "broker": broker,
        "tables": make_outbox_tables(metadata, prefix=prefix),
        **kw,
    }
    if api is None:
        return Producer(engine=engine, **options)  # type: ignore[arg-type]
    made: Producer = api.producer(engine=engine, **options)
    return made


def test_staged_messages_exist_only_if_committed_and_reach_every_group(
    engine: Engine, metadata: MetaData, prefix: str, broker: txmq.Adapter, topic: str, api: Api
) -> None:
    declare(broker, topic, "cart", "billing")
    producer = producer_for(engine, metadata, prefix, broker, api)
    orders = metadata.tables[f"{prefix}orders"]
    with api.transaction(engine) as session:
        session.execute(insert(orders).values(id=1))
        producer.stage(session, txmq.Message(topic, b"rolled back"))
        session.rollback()
    committed = [txmq.Message(topic, f"order {i}".encode(), key=f"c{i % 3}") for i in range(20)]
    with api.transaction(engine) as session:
        session.execute(insert(orders).values(id=2))
        producer.stage(session, *committed)
    assert producer.relay().drain() == 20
    for group in ("cart", "billing"):
        received = receive(broker, group, topic, 20)
        assert sorted(m.id for m in received) == sorted(m.id for m in committed)
        assert all(m.body != b"rolled back" for m in received)
        # Per-key order holds on both brokers.
        for key in ("c0", "c1", "c2"):
            expected_order = [m.id for m in committed if m.key == key]
            assert [m.id for m in received if m.key == key] == expected_order
    assert producer.store.counts() == {"SENT": 20}


def test_half_message_outcomes(
    engine: Engine, metadata: MetaData, prefix: str, broker: txmq.Adapter, topic: str, api: Api
) -> None:
    """COMMIT, ROLLBACK, UNKNOWN then COMMIT, UNKNOWN then ROLLBACK, executor raises,
    checker raises, limit reached -> PARKED then resumed: exactly the committed ones arrive."""
    declare(broker, topic, "cart")
    resumed: set[bytes] = set()

    def checker(message: txmq.Message, count: int) -> LocalTransactionState:
        if message.body == b"checker-raises" and count == 1:
            raise RuntimeError("checker failed")
        if message.body == b"unknown-rollback":
            return ROLLBACK
        if message.body == b"parked" and message.body not in resumed:
            return UNKNOWN
        return COMMIT

    producer = producer_for(
        engine,
        metadata,
        prefix,
        broker,
        api,
        checker=checker,
        check_policy=CheckBackPolicy(
            immunity=NOW, interval=timedelta(milliseconds=1), max_checks=2
        ),
    )

    def executor(message: txmq.Message, answer: object) -> LocalTransactionState:
        if answer == "raise":
            raise RuntimeError("local transaction failed")
        assert isinstance(answer, LocalTransactionState)
        return answer

    sends = {
        b"commit": COMMIT,
        b"rollback": ROLLBACK,
        b"unknown-commit": UNKNOWN,
        b"unknown-rollback": UNKNOWN,
        b"raises-then-commit": "raise",
        b"checker-raises": UNKNOWN,
        b"parked": UNKNOWN,
    }
    results = {
        body: producer.send_in_transaction(txmq.Message(topic, body), executor, answer)
        for body, answer in sends.items()
    }
    assert results[b"commit"].record_state in (RecordState.READY, RecordState.SENT)
    assert results[b"rollback"].record_state is RecordState.ROLLED_BACK
    assert results[b"raises-then-commit"].local_state is UNKNOWN
    for _ in range(3):
        producer.check_back_once()
    parked = producer.parked()
    assert [r.message.body for r in parked] == [b"parked"]
    assert parked[0].check_count == 2
    resumed.add(b"parked")
    producer.resume(parked[0].message.id)
    producer.check_back_once()
    producer.relay().drain()
    expected = [b"checker-raises", b"commit", b"parked", b"raises-then-commit", b"unknown-commit"]
    assert sorted(m.body for m in receive(broker, "cart", topic, len(expected))) == expected
    assert nothing_more(broker, "cart", topic)


def test_self_answering_local_transaction(
    engine: Engine, metadata: MetaData, prefix: str, broker: txmq.Adapter, topic: str, api: Api
) -> None:
    declare(broker, topic, "cart")
    producer = producer_for(engine, metadata, prefix, broker, api)
    orders = metadata.tables[f"{prefix}orders"]
    ok = producer.send_in_local_transaction(
        txmq.Message(topic, b"ok"), lambda s: s.execute(insert(orders).values(id=1))
    )
    with pytest.raises(RuntimeError):
        producer.send_in_local_transaction(
            txmq.Message(topic, b"no"), lambda s: (_ for _ in ()).throw(RuntimeError("no"))
        )
    producer.relay().drain()
    assert [m.id for m in receive(broker, "cart", topic, 1)] == [ok.message_id]
    assert nothing_more(broker, "cart", topic)


@requires("across_processes")
def test_producer_killed_after_local_commit_is_resolved_by_another_instance(
    engine: Engine,
    metadata: MetaData,
    prefix: str,
    broker: txmq.Adapter,
    broker_url: str,
    database_url: str,
    topic: str,
    txmq_features: Features,
) -> None:
    """SIGKILL after the local commit, before the broker commit: another process of the
    group answers the check-back from the business data; delivered exactly once."""
    declare(broker, topic, "cart")
    orders = metadata.tables[f"{prefix}orders"]
    group = f"orders-{prefix.strip('_')}"
    producer_url = broker_url
    if txmq_features.abandon_url_options:
        # The killed producer's Kafka transaction stays open (stalling read_committed readers
        # of its partition) until the broker times it out; keep that short for the test.
        producer_url += ("&" if "?" in broker_url else "?") + txmq_features.abandon_url_options
    script = textwrap.dedent(
        f"""
        import os, signal
        from datetime import timedelta
        from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert
        import txmq
        engine = create_engine({database_url!r})
        metadata = MetaData()
        orders = Table({orders.name!r}, metadata, Column("id", Integer, primary_key=True))
        producer = txmq.Producer(group={group!r}, engine=engine, broker={producer_url!r},
                                 tables=txmq.make_outbox_tables(metadata, prefix={prefix!r}))
        def executor(message, order_id):
            with engine.begin() as connection:
                connection.execute(insert(orders).values(id=order_id))
            print(message.id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # local commit done, broker commit not
        producer.send_in_transaction(txmq.Message({topic!r}, b"order 42"), executor, 42,
                                     immunity=timedelta(0))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == -9, done.stderr
    message_id = done.stdout.strip()

    def checker(message: txmq.Message, count: int) -> LocalTransactionState:
        with engine.connect() as connection:
            exists = connection.execute(orders.select().where(orders.c.id == 42)).first()
        return COMMIT if exists else ROLLBACK

    survivor = producer_for(
        engine, metadata, prefix, broker, checker=checker, check_policy=QUICK_CHECKS
    )
    assert survivor.check_back_once() == 1
    assert survivor.relay().drain() == 1
    received = receive(broker, "cart", topic, 1)
    assert [m.id for m in received] == [message_id]
    assert nothing_more(broker, "cart", topic)


@requires("across_processes")
def test_relay_killed_between_confirm_and_mark_republishes_with_the_same_id(
    engine: Engine,
    metadata: MetaData,
    prefix: str,
    broker: txmq.Adapter,
    broker_url: str,
    database_url: str,
    topic: str,
) -> None:
    declare(broker, topic, "cart")
    producer = producer_for(engine, metadata, prefix, broker)
    message = txmq.Message(topic, b"once")
    with Session(engine) as session, session.begin():
        producer.stage(session, message)
    script = textwrap.dedent(
        f"""
        import os, signal
        from sqlalchemy import MetaData, create_engine
        import txmq
        producer = txmq.Producer(group={producer.group!r}, engine=create_engine({database_url!r}),
                                 broker={broker_url!r},
                                 tables=txmq.make_outbox_tables(MetaData(), prefix={prefix!r}))
        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)  # the broker confirmed; SENT not written
        producer.store.mark_sent = killed
        producer.relay().run_once()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == -9, done.stderr
    assert producer.store.get(message.id).state is RecordState.READY
    assert producer.relay().drain() == 1
    received = receive(broker, "cart", topic, 2)
    assert [m.id for m in received] == [message.id, message.id]


def test_oversized_and_foreign_session_are_rejected_and_nothing_is_written(
    engine: Engine, metadata: MetaData, prefix: str, broker: txmq.Adapter, topic: str, api: Api
) -> None:
    producer = producer_for(engine, metadata, prefix, broker, api)
    too_big = txmq.Message(topic, b"x" * (broker.max_body_bytes + 1))
    with pytest.raises(txmq.MessageTooLarge):
        producer.send_in_transaction(too_big, lambda m, a: COMMIT, None)
    with api.transaction(engine) as session, pytest.raises(txmq.MessageTooLarge):
        producer.stage(session, too_big)
    sqlite = create_engine("sqlite://")
    with api.transaction(sqlite) as session, pytest.raises(txmq.WrongDatabase):
        producer.stage(session, txmq.Message(topic, b"x"))
    assert producer.store.counts() == {}


def test_two_relays_and_two_check_backs_publish_once_in_key_order(
    engine: Engine, metadata: MetaData, prefix: str, broker: txmq.Adapter, topic: str, api: Api
) -> None:
    declare(broker, topic, "cart")
    producer = producer_for(
        engine,
        metadata,
        prefix,
        broker,
        api,
        checker=lambda m, c: COMMIT,
        check_policy=QUICK_CHECKS,
    )
    with api.transaction(engine) as session:
        producer.stage(
            session,
            *(txmq.Message(topic, str(i).encode(), key=f"k{i % 7}") for i in range(600)),
        )
    half = [
        producer.send_in_transaction(
            txmq.Message(topic, b"half", key="half"), lambda m, a: UNKNOWN, None
        ).message_id
        for _ in range(20)
    ]
    relays = [producer.relay(batch_size=50, instance_id=f"r{n}") for n in range(2)]
    checkers = [
        threading.Thread(target=lambda: [producer.check_back_once(limit=3) for _ in range(10)])
        for _ in range(2)
    ]
    for worker in (*relays, *checkers):
        worker.start()  # type: ignore[attr-defined]
    try:
        received = receive(broker, "cart", topic, 620, timeout=90)
    finally:
        for relay in relays:
            relay.stop()
        for checker in checkers:
            checker.join(30)
    ids = [m.id for m in received]
    assert len(ids) == 620
    assert len(set(ids)) == 620, "published twice without a crash"
    assert set(half) <= set(ids)
    for key in {m.key for m in received if m.key != "half"}:
        bodies = [int(m.body) for m in received if m.key == key]
        assert bodies == sorted(bodies), f"key {key} out of order"
    assert nothing_more(broker, "cart", topic)


@requires("native_transactions")
def test_a_native_half_message_is_invisible_until_committed(
    engine: Engine, metadata: MetaData, prefix: str, broker_url: str, topic: str
) -> None:
    """While the executor runs, the message sits in an open Kafka transaction: a
    read_committed consumer does not see it; after ROLLBACK it never does."""
    broker = txmq.connect(broker_url)
    try:
        declare(broker, topic, "cart")
        producer = producer_for(engine, metadata, prefix, broker)
        seen_while_open: list[txmq.Message] = []

        def executor(message: txmq.Message, answer: LocalTransactionState) -> LocalTransactionState:
            seen_while_open.extend(receive(broker, "cart", topic, 1, timeout=3.0))
            return answer

        rolled_back = producer.send_in_transaction(txmq.Message(topic, b"no"), executor, ROLLBACK)
        committed = producer.send_in_transaction(txmq.Message(topic, b"yes"), executor, COMMIT)
        assert seen_while_open == []
        assert rolled_back.record_state is RecordState.ROLLED_BACK
        assert committed.record_state is RecordState.SENT
        assert [m.id for m in receive(broker, "cart", topic, 1)] == [committed.message_id]
        assert nothing_more(broker, "cart", topic)
        producer.close()
    finally:
        broker.close()


def test_a_relay_leaves_another_groups_records_ready(
    engine: Engine, metadata: MetaData, prefix: str, broker: txmq.Adapter, topic: str, api: Api
) -> None:
    """Group B's relay is not running: group A's relay does not publish B's records, and
    B's earlier record with the same topic and key does not hold A's back."""
    declare(broker, topic, "cart")
    tables = make_outbox_tables(metadata, prefix=prefix)
    ours, theirs = (
        api.producer(
            group=f"{name}-{prefix.strip('_')}", engine=engine, broker=broker, tables=tables
        )
        for name in ("a", "b")
    )
    theirs_message = txmq.Message(topic, b"b's", key="customer-1")
    ours_message = txmq.Message(topic, b"a's", key="customer-1")
    with api.transaction(engine) as session:
        theirs.stage(session, theirs_message)
        ours.stage(session, ours_message)
    assert ours.relay().drain() == 1
    assert [m.id for m in receive(broker, "cart", topic, 1)] == [ours_message.id]
    assert nothing_more(broker, "cart", topic)
    assert ours.store.get(theirs_message.id).state is RecordState.READY
    assert ours.store.counts(groups=[theirs.group]) == {"READY": 1}


@pytest.fixture
def sqlite_engine(txmq_sqlite_engine: Engine) -> Engine:
    """An outbox in a SQLite file (with the default tables), as an embedded app has it."""
    return txmq_sqlite_engine


def test_producers_sharing_a_sqlite_file_publish_and_check_each_record_once(
    sqlite_engine: Engine, broker: txmq.Adapter, topic: str
) -> None:
    """Three instances of a group started on one SQLite file (threads): one relay and one
    check-back worker work, the others stand by."""
    declare(broker, topic, "cart")
    checks: list[tuple[str, int]] = []
    producers = [
        Producer(
            group="orders",
            engine=sqlite_engine,
            broker=broker,
            checker=lambda m, count: checks.append((m.id, count)) or COMMIT,  # type: ignore[func-returns-value]
            check_policy=QUICK_CHECKS,
        )
        for _ in range(3)
    ]
    try:
        staged = [txmq.Message(topic, str(i).encode()) for i in range(200)]
        with Session(sqlite_engine) as session, session.begin():
            producers[0].stage(session, *staged)
        half = [
            producers[0].send_in_transaction(
                txmq.Message(topic, b"half"), lambda m, a: UNKNOWN, None
            )
            for _ in range(20)
        ]
        for producer in producers:
            producer.start(poll_interval=0.1, check_back_every=0.05)
        received = receive(broker, "cart", topic, 220, timeout=60)
        ids = [m.id for m in received]
        assert len(set(ids)) == 220
        assert len(ids) == 220, "published more than once"
        assert nothing_more(broker, "cart", topic)
        assert sorted(checks) == sorted((r.message_id, 1) for r in half), "checked twice"
    finally:
        for producer in producers:
            producer.close()


@requires("across_processes")
def test_a_sqlite_relay_in_another_process_excludes_this_one_until_it_is_killed(
    sqlite_engine: Engine, broker: txmq.Adapter, broker_url: str, topic: str
) -> None:
    declare(broker, topic, "cart")
    database = sqlite_engine.url.render_as_string(hide_password=False)
    script = textwrap.dedent(
        f"""
        import sys, time
        from sqlalchemy import create_engine
        import txmq
        producer = txmq.Producer(group="orders", engine=create_engine({database!r}),
                                 broker={broker_url!r})
        relay = producer.relay(poll_interval=0.1).start()
        while not relay.active:
            time.sleep(0.05)
        print("holding", flush=True)
        sys.stdin.read()
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    producer = Producer(group="orders", engine=sqlite_engine, broker=broker)
    relay = None
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "holding\n"
        relay = producer.relay(poll_interval=0.1).start()
        before = [txmq.Message(topic, b"before") for _ in range(50)]
        with Session(sqlite_engine) as session, session.begin():
            producer.stage(session, *before)
        received = receive(broker, "cart", topic, 50)
        assert sorted(m.id for m in received) == sorted(m.id for m in before)
        assert nothing_more(broker, "cart", topic), "published twice"
        assert not relay.active
        with pytest.raises(txmq.WorkerBusy):
            producer.relay().drain()
        holder.kill()
        holder.wait(30)
        assert wait_for(lambda: relay is not None and relay.active), "no take-over"
        after = [txmq.Message(topic, b"after") for _ in range(10)]
        with Session(sqlite_engine) as session, session.begin():
            producer.stage(session, *after)
        assert sorted(m.id for m in receive(broker, "cart", topic, 10)) == sorted(
            m.id for m in after
        )
    finally:
        holder.kill()
        holder.wait(30)
        if relay is not None:
            relay.stop()


@pytest.fixture(params=["sqlite", "database_url"])
def outbox(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str
) -> Iterator[tuple[Engine, str]]:
    """``(engine, table prefix)`` of an outbox on SQLite (a file) and on the database of
    ``database_url`` (PostgreSQL, or MariaDB where a test module points it there)."""
    prefix = f"p{uuid.uuid4().hex[:8]}_"
    url = f"sqlite:///{tmp_path / 'app.db'}" if request.param == "sqlite" else database_url
    engine = create_engine(url)
    metadata = MetaData()
    make_outbox_tables(metadata, prefix=prefix)
    metadata.create_all(engine)
    yield engine, prefix
    metadata.drop_all(engine)
    engine.dispose()


def test_a_check_back_never_decides_a_record_whose_executor_runs(
    outbox: tuple[Engine, str], broker: txmq.Adapter, topic: str, api: Api
) -> None:
    """Immunity 0 and a checker that says ROLLBACK (the order does not exist yet): while the
    executor runs, check-backs of other instances of the group decide nothing; its COMMIT
    wins and the message is delivered (through the relay, or Kafka's native half message)."""
    engine, prefix = outbox
    declare(broker, topic, "cart")
    tables = make_outbox_tables(MetaData(), prefix=prefix)
    checked: list[str] = []

    def instance(on: Api) -> Producer:
        made: Producer = on.producer(
            group="orders",
            engine=engine,
            broker=broker,
            tables=tables,
            checker=lambda m, c: checked.append(m.id) or ROLLBACK,  # type: ignore[func-returns-value]
            check_policy=QUICK_CHECKS,
        )
        return made

    # The other instances are synchronous: an async executor runs on the event loop, where
    # awaiting another async producer's check-back from synchronous code cannot be done.
    producer, others = instance(api), [instance(Api("sync")) for _ in range(2)]
    looked_at: list[int] = []

    def executor(message: txmq.Message, arg: None) -> LocalTransactionState:
        looked_at.extend(other.check_back_once() for other in others for _ in range(3))
        return COMMIT

    result = producer.send_in_transaction(txmq.Message(topic, b"order 7"), executor, None)
    assert checked == []
    assert looked_at == [0] * 6
    assert result.local_state is COMMIT
    assert result.record_state in (RecordState.READY, RecordState.SENT)
    producer.relay().drain()
    assert [m.id for m in receive(broker, "cart", topic, 1)] == [result.message_id]
    assert nothing_more(broker, "cart", topic)
    producer.close()


@requires("across_processes")
def test_a_producer_killed_mid_executor_is_resolved_by_check_back(
    outbox: tuple[Engine, str],
    broker: txmq.Adapter,
    broker_url: str,
    topic: str,
    txmq_features: Features,
) -> None:
    """The SQLite lease (here 1 s) runs out with its producer; PostgreSQL's row lock ends
    with its connection: another instance's check-back then decides the record."""
    engine, prefix = outbox
    declare(broker, topic, "cart")
    producer_url = broker_url
    if txmq_features.abandon_url_options:
        # The killed producer's Kafka transaction stays open until the broker times it out.
        producer_url += ("&" if "?" in broker_url else "?") + txmq_features.abandon_url_options
    database = engine.url.render_as_string(hide_password=False)
    script = textwrap.dedent(
        f"""
        import sys
        from datetime import timedelta
        from sqlalchemy import MetaData, create_engine
        import txmq
        producer = txmq.Producer(
            group="orders", engine=create_engine({database!r}), broker={producer_url!r},
            tables=txmq.make_outbox_tables(MetaData(), prefix={prefix!r}),
            check_policy=txmq.CheckBackPolicy(
                immunity=timedelta(0), executor_lease=timedelta(seconds=1)))
        def executor(message, arg):
            print(message.id, flush=True)
            sys.stdin.read()  # killed in here
        producer.send_in_transaction(txmq.Message({topic!r}, b"order 8"), executor, None)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        message_id = process.stdout.readline().strip()
        assert message_id
        process.kill()
        process.wait(30)
    finally:
        process.kill()
        process.wait(30)
    survivor = Producer(
        group="orders",
        engine=engine,
        broker=broker,
        tables=make_outbox_tables(MetaData(), prefix=prefix),
        checker=lambda m, c: COMMIT,
        check_policy=QUICK_CHECKS,
    )
    assert wait_for(lambda: survivor.check_back_once() == 1), "never checked back"
    assert survivor.store.get(message_id).state is RecordState.READY
    assert survivor.relay().drain() == 1
    assert [m.id for m in receive(broker, "cart", topic, 1)] == [message_id]
    survivor.close()
