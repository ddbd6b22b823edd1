"""txmq.aio on real brokers and every asyncio driver: the producer's and consumer's
transactional behaviour through the async API, and an event loop that txmq never blocks.

Each test runs on RabbitMQ and Kafka (``broker_url``) times PostgreSQL through asyncpg and
psycopg's asyncio mode, and SQLite through aiosqlite.
"""

from __future__ import annotations

import asyncio
import asyncio.events as asyncio_events
import concurrent.futures
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, Table, create_engine, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import txmq
from txmq.aio import AsyncConsumer, AsyncProducer
from txmq.consumer import DeadLetters, RetryPolicy, make_inbox_table
from txmq.outbox import make_outbox_tables

pytestmark = [pytest.mark.broker, pytest.mark.database]

DRIVERS = ["asyncpg", "psycopg-async", "aiosqlite"]
COMMIT = txmq.LocalTransactionState.COMMIT
ROLLBACK = txmq.LocalTransactionState.ROLLBACK
UNKNOWN = txmq.LocalTransactionState.UNKNOWN


@dataclass
class Database:
    """One database with fresh, uniquely named tables: txmq's engine for looking, and the
    async URL the application uses."""

    engine: Engine
    async_url: str
    metadata: MetaData
    prefix: str

    def table(self, name: str) -> Table:
        return self.metadata.tables[f"{self.prefix}{name}"]

    @property
    def outbox(self) -> txmq.OutboxTables:
        return make_outbox_tables(self.metadata, prefix=self.prefix)

    @property
    def inbox(self) -> Table:
        return self.table("inbox")

    def ids(self, name: str) -> list[int]:
        table = self.table(name)
        with self.engine.connect() as connection:
            return sorted(connection.execute(select(table.c.id)).scalars())

    def state(self, message_id: str) -> str:
        records = self.outbox.records
        with self.engine.connect() as connection:
            return str(
                connection.execute(
                    select(records.c.state).where(records.c.id == message_id)
                ).scalar_one()
            )

    def inbox_rows(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(self.inbox)).scalar())


@pytest.fixture(params=DRIVERS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    driver = request.param
    if driver == "aiosqlite":
        sync_url = f"sqlite:///{tmp_path / 'app.db'}"
        async_url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    else:
        sync_url = request.getfixturevalue("database_url")
        url = create_engine(sync_url).url
        # create_async_engine picks psycopg's asyncio dialect for postgresql+psycopg.
        drivername = "postgresql+asyncpg" if driver == "asyncpg" else "postgresql+psycopg"
        async_url = url.set(drivername=drivername).render_as_string(hide_password=False)
    engine = create_engine(sync_url)
    prefix = f"aio{uuid.uuid4().hex[:8]}_"
    metadata = MetaData()
    Table(f"{prefix}orders", metadata, Column("id", Integer, primary_key=True))
    Table(f"{prefix}cart", metadata, Column("id", Integer, primary_key=True))
    Table(f"{prefix}refunds", metadata, Column("id", Integer, primary_key=True))
    make_outbox_tables(metadata, prefix=prefix)
    make_inbox_table(metadata, f"{prefix}inbox")
    metadata.create_all(engine)
    yield Database(engine, async_url, metadata, prefix)
    metadata.drop_all(engine)
    engine.dispose()


def run(database: Database, scenario: Callable[[AsyncEngine], Awaitable[None]]) -> None:
    """``asyncio.run`` of ``scenario(async_engine)``, the engine disposed afterwards."""

    async def main() -> None:
        engine = create_async_engine(database.async_url)
        try:
            await scenario(engine)
        finally:
            await engine.dispose()

    asyncio.run(main())


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait (without blocking the loop) until ``condition()`` holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


def body(order: int) -> bytes:
    return json.dumps({"order": order}).encode()


def order_of(message: txmq.Message) -> int:
    return int(json.loads(message.body)["order"])


def test_staged_messages_are_consumed_once_by_async_handlers(
    database: Database, broker: txmq.Adapter, unique: Callable[[str], str]
) -> None:
    """Staged in an AsyncSession: published iff committed; the async handler's write commits
    with the inbox row, and a duplicate delivery does not run the handler again."""
    topic = unique("orders.created").replace("-", "_")
    orders, cart = database.table("orders"), database.table("cart")
    calls: list[int] = []

    async def scenario(engine: AsyncEngine) -> None:
        consumer = AsyncConsumer(
            broker=broker, engine=engine, group=unique("cart"), inbox=database.inbox
        )

        @consumer.handler(topic)
        async def on_order(message: txmq.Message, session: AsyncSession) -> None:
            calls.append(order_of(message))
            await session.execute(insert(cart).values(id=order_of(message)))

        await consumer.start()
        producer = AsyncProducer(
            group=unique("orders"), engine=engine, broker=broker, tables=database.outbox
        )
        await producer.start()
        try:
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(insert(orders).values(id=1))
                await producer.stage(session, txmq.Message(topic, body(1), key="k"))

            async def stage_then_fail() -> None:
                async with AsyncSession(engine) as session, session.begin():
                    await session.execute(insert(orders).values(id=2))
                    await producer.stage(session, txmq.Message(topic, body(2), key="k"))
                    raise ZeroDivisionError

            with pytest.raises(ZeroDivisionError):
                await stage_then_fail()
            duplicate = txmq.Message(topic, body(3), key="k")
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(insert(orders).values(id=3))
                await producer.stage(session, duplicate)
            await eventually(lambda: consumer.stats.processed == 2, "two processed messages")
            with broker.publisher() as publisher:  # the same message again: a redelivery
                assert publisher.publish([duplicate])[0].ok
            await eventually(lambda: consumer.stats.duplicates == 1, "the duplicate")
        finally:
            await consumer.stop()
            await producer.close()
        assert consumer.healthy()

    run(database, scenario)
    assert database.ids("orders") == [1, 3]
    assert database.ids("cart") == [1, 3]
    assert sorted(calls) == [1, 3]
    assert database.inbox_rows() == 2


def test_half_messages_with_async_executors_and_checker(
    database: Database, broker: txmq.Adapter, unique: Callable[[str], str]
) -> None:
    """COMMIT, ROLLBACK, UNKNOWN and a raising executor; UNKNOWN is resolved by the async
    checker; a checker that keeps answering UNKNOWN parks the record, which an operator
    then commits; a self-answering local transaction commits or discards."""
    topic = unique("orders.half").replace("-", "_")
    orders = database.table("orders")
    broker.declare([txmq.Topology(unique("shipping"), topic)])
    checks: list[tuple[int, int]] = []

    async def scenario(engine: AsyncEngine) -> None:
        async def check(message: txmq.Message, count: int) -> txmq.LocalTransactionState:
            await asyncio.sleep(0)  # a real coroutine, awaited on this loop
            checks.append((order_of(message), count))
            return COMMIT if order_of(message) == 3 else UNKNOWN

        producer = AsyncProducer(
            group=unique("orders"),
            engine=engine,
            broker=broker,
            tables=database.outbox,
            checker=check,
            check_policy=txmq.CheckBackPolicy(
                immunity=timedelta(0), interval=timedelta(seconds=5), max_checks=1
            ),
        )

        async def execute(message: txmq.Message, answer: str) -> txmq.LocalTransactionState:
            async with engine.begin() as connection:
                await connection.execute(insert(orders).values(id=order_of(message)))
            if answer == "raise":
                raise RuntimeError("the local transaction blew up")
            return txmq.LocalTransactionState(answer)

        async with producer:
            committed = await producer.send_in_transaction(
                txmq.Message(topic, body(1)), execute, "COMMIT"
            )
            assert committed.local_state is COMMIT
            assert committed.record_state in (txmq.RecordState.READY, txmq.RecordState.SENT)
            rolled_back = await producer.send_in_transaction(
                txmq.Message(topic, body(2)), execute, "ROLLBACK"
            )
            assert rolled_back.record_state is txmq.RecordState.ROLLED_BACK
            unknown = await producer.send_in_transaction(
                txmq.Message(topic, body(3)), execute, "UNKNOWN", immunity=timedelta(0)
            )
            raised = await producer.send_in_transaction(
                txmq.Message(topic, body(4)), execute, "raise", immunity=timedelta(0)
            )
            assert (unknown.local_state, raised.local_state) == (UNKNOWN, UNKNOWN)
            assert unknown.record_state is raised.record_state is txmq.RecordState.PREPARED

            assert await producer.check_back_once() == 2
            assert database.state(unknown.message_id) == "READY"
            assert database.state(raised.message_id) == "PARKED"
            assert [r.message.id for r in await producer.parked()] == [raised.message_id]
            await producer.commit(raised.message_id)
            assert database.state(raised.message_id) == "READY"
            with pytest.raises(txmq.RecordNotFound):
                await producer.resume(raised.message_id)

            async def work(session: AsyncSession) -> None:
                await session.execute(insert(orders).values(id=5))

            local = await producer.send_in_local_transaction(txmq.Message(topic, body(5)), work)
            assert (local.local_state, local.record_state) == (COMMIT, txmq.RecordState.READY)

            async def fail(session: AsyncSession) -> None:
                await session.execute(insert(orders).values(id=6))
                raise KeyError("no such customer")

            discarded = txmq.Message(topic, body(6))
            with pytest.raises(KeyError):
                await producer.send_in_local_transaction(discarded, fail)
            assert database.state(discarded.id) == "ROLLED_BACK"

    run(database, scenario)
    assert sorted(checks) == [(3, 1), (4, 1)]
    assert database.ids("orders") == [1, 2, 3, 4, 5]


def test_async_handler_failures_retry_dead_letter_and_compensate(
    database: Database, broker: txmq.Adapter, unique: Callable[[str], str]
) -> None:
    """A failing async handler's writes roll back; it is retried after the policy's delay,
    then dead-lettered with its error, and the producer group's async compensation handler
    runs once; txmq.Reject dead-letters at the first attempt."""
    topic = unique("payments").replace("-", "_")
    group, producer_group = unique("ledger"), unique("bank")
    cart, refunds = database.table("cart"), database.table("refunds")
    attempts: list[tuple[int, int]] = []

    async def scenario(engine: AsyncEngine) -> None:
        consumer = AsyncConsumer(
            broker=broker,
            engine=engine,
            group=group,
            inbox=database.inbox,
            retry=RetryPolicy(delays=(0.5,)),
            compensate=True,
        )

        @consumer.handler(topic)
        async def on_payment(message: txmq.Message, session: AsyncSession) -> None:
            attempts.append((order_of(message), txmq.attempt_of(message)))
            await session.execute(insert(cart).values(id=order_of(message)))
            if order_of(message) == 2:
                raise txmq.Reject("frozen account")
            raise ValueError("insufficient funds")

        refunder = AsyncConsumer(
            broker=broker, engine=engine, group=unique("refunds"), inbox=database.inbox
        )

        @refunder.compensation(producer_group)
        async def refund(c: txmq.Compensation, session: AsyncSession) -> None:
            await session.execute(insert(refunds).values(id=order_of(txmq.Message("x", c.body))))

        await consumer.start()
        await refunder.start()
        producer = AsyncProducer(
            group=producer_group, engine=engine, broker=broker, tables=database.outbox
        )
        await producer.start()
        try:
            async with AsyncSession(engine) as session, session.begin():
                await producer.stage(session, txmq.Message(topic, body(1)))
                await producer.stage(session, txmq.Message(topic, body(2)))
            await eventually(lambda: consumer.stats.dead_lettered == 2, "two dead letters")
            await eventually(lambda: refunder.stats.processed == 2, "two compensations")
        finally:
            await consumer.stop()
            await refunder.stop()
            await producer.close()

    run(database, scenario)
    assert sorted(attempts) == [(1, 1), (1, 2), (2, 1)]
    assert database.ids("cart") == []  # every failed attempt rolled back
    assert database.ids("refunds") == [1, 2]
    with DeadLetters(broker, group=group, topic=topic) as dlq:
        letters = {order_of(letter.message): letter for letter in dlq.list()}
    assert sorted(letters) == [1, 2]
    assert (letters[1].error_type, letters[1].attempts) == ("ValueError", 2)
    assert letters[2].error_type == "txmq.consumer.errors.Reject"


class SlowCallbacks(logging.Handler):
    """Collects asyncio's debug-mode warnings about callbacks that held the loop too long."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("Executing"):
            self.messages.append(text)


def _on_loop_thread() -> bool:
    return asyncio_events._get_running_loop() is not None


TXMQ_SOURCE = str(Path(txmq.__file__).parent)


def _origin() -> str | None:
    """Whose code made the call being recorded: the innermost frame of txmq or of this test
    module (``"txmq <file>:<line>"`` or ``"test"``), else ``"other"``; None for a wait of
    the threading module's own (``Event.wait`` on its condition; ``Thread.start`` waiting
    the moment a new thread of an executor takes to start, as every ``to_thread`` does)."""
    frame = sys._getframe(3)  # the caller of the watched function (past note and the wrapper)
    if frame.f_code.co_filename == threading.__file__:
        return None
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(TXMQ_SOURCE):
            return f"txmq {filename[len(TXMQ_SOURCE) + 1 :]}:{frame.f_lineno}"
        if filename == __file__:
            return "test"
        frame = frame.f_back  # type: ignore[assignment]
    return "other"


def _waits(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a ``wait(timeout=...)`` call may wait (a zero timeout only looks)."""
    timeout = args[0] if args else kwargs.get("timeout")
    return timeout is None or timeout > 0


def record_blocking_waits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record ``(what, whose)`` for each call that can block the thread it runs on, made on
    a thread running an event loop: a sleep, a wait on a threading event or condition, the
    result of an unfinished ``concurrent.futures`` future, I/O on a blocking socket."""
    found: list[tuple[str, str]] = []

    def note(what: str) -> None:
        if _on_loop_thread() and (whose := _origin()) is not None:
            found.append((what, whose))

    sleep = time.sleep

    def watched_sleep(seconds: float) -> None:
        if seconds > 0:
            note("time.sleep")
        sleep(seconds)

    monkeypatch.setattr(time, "sleep", watched_sleep)
    for owner, name, blocks in (
        (threading.Event, "wait", lambda self, *a, **kw: not self.is_set() and _waits(a, kw)),
        (threading.Condition, "wait", lambda self, *a, **kw: _waits(a, kw)),
        (concurrent.futures.Future, "result", lambda self, *a, **kw: not self.done()),
        *(
            (socket.socket, name, lambda self, *a, **kw: self.gettimeout() != 0.0)
            for name in ("recv", "recv_into", "send", "sendall", "connect", "accept")
        ),
    ):
        method = getattr(owner, name)

        def watched(
            self: Any, *args: Any, _m: Any = method, _b: Any = blocks, _w: str = name, **kw: Any
        ) -> Any:
            if _b(self, *args, **kw):
                note(f"{type(self).__name__}.{_w}")
            return _m(self, *args, **kw)

        monkeypatch.setattr(owner, name, watched)
    return found


def record_blocking_calls(broker: txmq.Adapter, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap ``broker``'s subscriptions and publishers: each call made on a thread that runs
    an event loop is recorded (by name) in the returned list."""
    on_loop: list[str] = []

    def watched(target: object, names: tuple[str, ...]) -> None:
        for name in names:
            method = getattr(target, name)

            def call(*args: object, _method: Any = method, _name: str = name, **kw: object) -> Any:
                if _on_loop_thread():
                    on_loop.append(_name)
                return _method(*args, **kw)

            setattr(target, name, call)

    subscribe, publisher = broker.subscribe, broker.publisher

    def watched_subscribe(*args: Any, **kwargs: Any) -> Any:
        if _on_loop_thread():
            on_loop.append("subscribe")
        subscription = subscribe(*args, **kwargs)
        watched(subscription, ("poll", "ack", "release", "close", "withheld"))
        return subscription

    def watched_publisher(*args: Any, **kwargs: Any) -> Any:
        if _on_loop_thread():
            on_loop.append("publisher")
        opened = publisher(*args, **kwargs)
        watched(opened, ("publish", "send_to_queue", "close"))
        return opened

    monkeypatch.setattr(broker, "subscribe", watched_subscribe)
    monkeypatch.setattr(broker, "publisher", watched_publisher)
    return on_loop


def test_a_handler_heavy_load_never_blocks_the_event_loop(
    database: Database,
    broker: txmq.Adapter,
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In asyncio debug mode with a 20 ms slow-callback threshold, staging and consuming 300
    messages (with a retry and a dead letter among them) makes no broker call that may wait
    for the network (acks that hand over or send asynchronously aside) and no blocking call
    (sleep, thread wait, unfinished future, blocking socket) from txmq's code on the event
    loop's thread. The test's own blocking callback is caught by both
    detectors, so they work.

    asyncio's slow-callback warnings alone cannot tell: on a loaded machine its own socket
    callbacks, the test's task and txmq's tasks all get some (a thread descheduled or
    waiting for the GIL while pika's and librdkafka's threads run), with no blocking call
    among them; so they are shown, not counted."""
    topic = unique("load").replace("-", "_")
    cart = database.table("cart")
    count = 300
    slow = SlowCallbacks()
    asyncio_log = logging.getLogger("asyncio")
    on_loop = record_blocking_calls(broker, monkeypatch)
    waits = record_blocking_waits(monkeypatch)

    async def scenario(engine: AsyncEngine) -> None:
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = 0.02
        consumer = AsyncConsumer(
            broker=broker, engine=engine, group=unique("cart"), inbox=database.inbox
        )

        @consumer.handler(topic, retry=RetryPolicy(delays=(0.2,)))
        async def on_order(message: txmq.Message, session: AsyncSession) -> None:
            if order_of(message) == 0:
                raise ValueError("the one poison message")
            await session.execute(insert(cart).values(id=order_of(message)))

        await consumer.start()
        # The constructor asks Kafka its size limit (documented): open() does it in a thread.
        producer = await AsyncProducer.open(
            group=unique("orders"), engine=engine, broker=broker, tables=database.outbox
        )
        await producer.start()
        try:
            for start in range(0, count + 1, 50):
                async with AsyncSession(engine) as session, session.begin():
                    await producer.stage(
                        session,
                        *(
                            txmq.Message(topic, body(n))
                            for n in range(start, start + 50)
                            if n <= count
                        ),
                    )
            await eventually(lambda: consumer.stats.processed == count, f"{count} processed")
            await eventually(lambda: consumer.stats.dead_lettered == 1, "the dead letter")
        finally:
            await consumer.stop()
            await producer.close()

        async def blocking_on_purpose() -> None:
            time.sleep(0.05)

        await asyncio.create_task(blocking_on_purpose(), name="the-test-itself")

    asyncio_log.addHandler(slow)
    try:

        async def main() -> None:
            engine = create_async_engine(database.async_url)
            try:
                await scenario(engine)
            finally:
                await engine.dispose()

        asyncio.run(main(), debug=True)
    finally:
        asyncio_log.removeHandler(slow)
    # Acks and counts that never wait for the network (Subscription.settles_at_once) run on
    # the loop: a thread hop each would cost more than the ack. The detector of blocking
    # waits below watches them too.
    assert set(on_loop) <= {"ack", "withheld"}, on_loop
    assert "ack" in on_loop
    assert any("the-test-itself" in text for text in slow.messages), slow.messages
    assert ("time.sleep", "test") in waits, waits
    from_txmq = sorted({call for call in waits if call[1].startswith("txmq")})
    slow_txmq = [text for text in slow.messages if "txmq" in text]
    assert from_txmq == [], f"{from_txmq}; slow callbacks of txmq's tasks: {slow_txmq}"
    assert len(database.ids("cart")) == count


def test_async_dead_letters_on_a_broker_url_connect_off_the_loop_and_close(
    broker_url: str, unique: Callable[[str], str]
) -> None:
    """Given a URL, AsyncDeadLetters connects in its thread (the loop's thread makes no
    broker call), lists, shows, replays and purges, and closes its connection; a missing
    DLQ and a bad name are typed errors."""
    from txmq.aio import AsyncDeadLetters
    from txmq.wire import dead_letter_copy

    topology = txmq.Topology(unique("billing"), unique("invoices").replace("-", "_"))
    adapter = txmq.connect(broker_url)
    adapter.declare([topology])
    letters = [txmq.Message(topology.topic, b"%d" % n) for n in range(2)]
    with adapter.publisher() as publisher:
        for letter in letters:
            copy = dead_letter_copy(
                letter,
                group=topology.group,
                error_type="builtins.ValueError",
                error_message="bad",
                attempt=1,
                now=1_700_000_000,
            )
            assert all(o.ok for o in publisher.send_to_queue(topology.dead_letter_queue, [copy]))
    connected_on: list[str] = []
    connect = txmq.adapters.connect

    def watched_connect(*args: Any, **kwargs: Any) -> Any:
        connected_on.append("loop" if _on_loop_thread() else "thread")
        return connect(*args, **kwargs)

    async def scenario() -> None:
        dlq = AsyncDeadLetters(broker_url, group=topology.group, topic=topology.topic)
        async with dlq:
            assert sorted(x.message.id for x in await dlq.list(timeout=15)) == sorted(
                m.id for m in letters
            )
            shown = await dlq.show(letters[0].id, timeout=15)
            assert shown is not None
            assert shown.error_type == "builtins.ValueError"
            assert (await dlq.replay([letters[0].id], timeout=15)).replayed == [letters[0].id]
            assert await dlq.purge() == 1
            assert await dlq.list(timeout=5) == []
        missing = AsyncDeadLetters(broker_url, group=unique("nobody"), topic="t.evt")
        with pytest.raises(txmq.QueueNotFound):
            await missing.list(timeout=5)
        await missing.close()
        with pytest.raises(txmq.InvalidMessage):
            AsyncDeadLetters(broker_url, group="no spaces", topic="t.evt")

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("txmq.consumer.dlq.connect", watched_connect)
            asyncio.run(scenario())
    finally:
        adapter.close()
    assert connected_on == ["thread", "thread"]
