"""SQLAlchemy asyncio sessions: staging through ``run_sync`` on every async driver.

The outbox record exists exactly when the async transaction commits, and a relay with a
synchronous engine on the same database publishes it to a real broker. Where txmq cannot
run a statement on a caller's session, it raises a typed error before anything commits.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    Table,
    create_engine,
    func,
    insert,
    make_url,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

import txmq
from txmq.consumer import Consumer, DeadLetters, RetryPolicy, make_inbox_table
from txmq.outbox import Producer, make_outbox_tables
from txmq.testing import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.database]

ASYNC_DRIVERS = ["psycopg-async", "asyncpg", "aiosqlite"]


@dataclass
class Database:
    """A sync engine (txmq's) and the async URL of the same database, with fresh tables."""

    engine: Engine
    async_url: str
    metadata: MetaData
    prefix: str

    @property
    def orders(self) -> Table:
        return self.metadata.tables[f"{self.prefix}orders"]

    def producer(self, broker: txmq.Adapter | None = None) -> Producer:
        return Producer(
            group=f"g-{self.prefix.strip('_')}",
            engine=self.engine,
            broker=broker,
            tables=make_outbox_tables(self.metadata, prefix=self.prefix),
        )

    def count(self, table: Table) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def _async_url(driver: str, database_url: str, sqlite_file: Path) -> tuple[str, str]:
    """(sync URL, async URL) of one database for ``driver``."""
    if driver == "aiosqlite":
        return f"sqlite:///{sqlite_file}", f"sqlite+aiosqlite:///{sqlite_file}"
    url = make_url(database_url)
    # SQLAlchemy picks psycopg's async dialect for postgresql+psycopg in create_async_engine.
    drivername = "postgresql+psycopg" if driver == "psycopg-async" else "postgresql+asyncpg"
    return database_url, url.set(drivername=drivername).render_as_string(hide_password=False)


@pytest.fixture(params=ASYNC_DRIVERS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    driver = request.param
    database_url = "sqlite://" if driver == "aiosqlite" else request.getfixturevalue("database_url")
    sync_url, async_url = _async_url(driver, database_url, tmp_path / "app.db")
    engine = create_engine(sync_url)
    prefix = f"a{uuid.uuid4().hex[:8]}_"
    metadata = MetaData()
    Table(f"{prefix}orders", metadata, Column("id", Integer, primary_key=True))
    make_outbox_tables(metadata, prefix=prefix)
    metadata.create_all(engine)
    yield Database(engine, async_url, metadata, prefix)
    metadata.drop_all(engine)
    engine.dispose()


def run_async(database: Database, work: Callable[[AsyncSession], object]) -> None:
    """Run ``await work(session)`` inside ``async with session.begin()`` on the async URL."""

    async def scenario() -> None:
        engine = create_async_engine(database.async_url)
        try:
            async with AsyncSession(engine) as session, session.begin():
                await work(session)  # type: ignore[misc]
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def receive(broker: txmq.Adapter, group: str, topic: str, count: int) -> list[txmq.Message]:
    received: list[txmq.Message] = []
    sources = broker.sources_for([txmq.Topology(group, topic)])
    deadline = time.monotonic() + 30
    with broker.subscribe(group, sources) as subscription:
        while len(received) < count and time.monotonic() < deadline:
            deliveries = subscription.poll(0.5)
            received.extend(d.message for d in deliveries if d.message is not None)
            subscription.ack(deliveries)
    return received


class Rollback(Exception):
    pass


def test_run_sync_stage_exists_after_commit_only_and_is_relayed(
    database: Database, broker: txmq.Adapter
) -> None:
    topic = f"orders.async.{uuid.uuid4().hex[:8]}"
    broker.declare([txmq.Topology("shipping", topic)])
    producer = database.producer(broker)
    orders = database.orders
    rolled_back = txmq.Message(topic, b"rolled back")
    committed = [txmq.Message(topic, b"one", key="k"), txmq.Message(topic, b"two", key="k")]

    async def stage_then_fail(session: AsyncSession) -> None:
        await session.execute(insert(orders).values(id=1))
        await session.run_sync(lambda s: producer.stage(s, rolled_back))
        raise Rollback

    with pytest.raises(Rollback):
        run_async(database, stage_then_fail)
    assert database.count(orders) == 0
    assert database.count(producer.tables.records) == 0

    async def stage(session: AsyncSession) -> None:
        await session.execute(insert(orders).values(id=2))
        await session.run_sync(lambda s: producer.stage(s, committed[0]))
        await session.run_sync(lambda s: producer.stage(s, committed[1]))

    run_async(database, stage)
    assert database.count(orders) == 1
    assert [r.message.id for r in producer.store.list(txmq.RecordState.READY)] == [
        m.id for m in committed
    ]

    relay = producer.relay(concurrency=1)
    try:
        assert relay.drain() == 2
    finally:
        relay.stop()
    got = receive(broker, "shipping", topic, 2)
    assert [(m.id, m.body) for m in got] == [(m.id, m.body) for m in committed]


def test_stage_on_an_async_session_itself_raises_before_commit(database: Database) -> None:
    producer = database.producer()
    orders = database.orders

    async def misuse(session: AsyncSession) -> None:
        await session.execute(insert(orders).values(id=1))
        producer.stage(session, txmq.Message("orders.async", b"x"))  # type: ignore[arg-type]

    with pytest.raises(txmq.ConfigurationError, match="run_sync"):
        run_async(database, misuse)
    assert database.count(orders) == 0
    assert database.count(producer.tables.records) == 0


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_sync_session_on_an_async_engine_outside_run_sync_raises(database: Database) -> None:
    producer = database.producer()
    async_engine = create_async_engine(database.async_url)
    try:
        with (
            Session(async_engine.sync_engine) as session,
            pytest.raises(txmq.ConfigurationError, match="run_sync"),
        ):
            producer.stage(session, txmq.Message("orders.async", b"x"))
    finally:
        asyncio.run(async_engine.dispose())
    assert database.count(producer.tables.records) == 0


def test_async_session_on_another_database_is_wrong_database(
    database: Database, tmp_path: Path
) -> None:
    other = tmp_path / "other.db"
    async_url = make_url(database.async_url)
    if async_url.get_backend_name() == "sqlite":
        database.async_url = f"sqlite+aiosqlite:///{other}"
    else:
        database.async_url = async_url.set(database="template1").render_as_string(
            hide_password=False
        )
    producer = database.producer()

    async def stage(session: AsyncSession) -> None:
        await session.run_sync(lambda s: producer.stage(s, txmq.Message("orders.async", b"x")))

    with pytest.raises(txmq.WrongDatabase):
        run_async(database, stage)
    assert database.count(producer.tables.records) == 0


def test_txmq_refuses_an_asyncio_engine_for_its_own_statements(database: Database) -> None:
    async_engine = create_async_engine(database.async_url)
    try:
        for engine in (async_engine, async_engine.sync_engine):
            with pytest.raises(txmq.ConfigurationError, match="synchronous SQLAlchemy Engine"):
                Producer(group="orders", engine=engine)  # type: ignore[arg-type]
            with pytest.raises(txmq.ConfigurationError, match="synchronous SQLAlchemy Engine"):
                Consumer(group="cart", engine=engine)  # type: ignore[arg-type]
    finally:
        asyncio.run(async_engine.dispose())


@pytest.mark.slow
@pytest.mark.parametrize("factory_kind", ["AsyncSession", "Session on AsyncEngine.sync_engine"])
def test_consumer_with_an_asyncio_session_factory_keeps_the_message(
    factory_kind: str, broker: txmq.Adapter, database_url: str
) -> None:
    """The handler transaction cannot run on an asyncio session: a ConfigurationError that
    says so stops the worker (health shows it), and the message is neither applied, retried
    nor dead-lettered; a consumer with a usable session applies it later."""
    suffix = uuid.uuid4().hex[:10]
    group, topic = f"g{suffix}", f"t{suffix}.evt"
    metadata = MetaData()
    inbox = make_inbox_table(metadata, name=f"inbox_{suffix}")
    engine = create_engine(database_url)
    metadata.create_all(engine)
    _, async_url = _async_url("asyncpg", database_url, Path("unused"))
    async_engine = create_async_engine(async_url)
    made: list[object] = []

    def asyncio_session() -> Session:
        session: object = (
            AsyncSession(async_engine)
            if factory_kind == "AsyncSession"
            else sessionmaker(async_engine.sync_engine)()
        )
        made.append(session)
        return session  # type: ignore[return-value]

    applied: list[str] = []

    def consumer(**kwargs: object) -> Consumer:
        c = Consumer(
            broker=broker,
            engine=engine,
            group=group,
            inbox=inbox,
            retry=RetryPolicy(delays=(0.5,)),
            poll_interval=0.2,
            **kwargs,  # type: ignore[arg-type]
        )
        c.add_handler(topic, lambda message, session: applied.append(message.id))
        return c

    message = txmq.Message(topic, b"order 1")
    try:
        refusing = consumer(session_factory=asyncio_session)
        with refusing:
            refusing.start()
            with broker.publisher() as publisher:
                assert all(o.ok for o in publisher.publish([message]))
            # A fatal error: the worker stops and says why; the message stays unacknowledged.
            wait_for(lambda: not refusing.healthy(), what="the consumer to stop on the error")
        assert made
        assert applied == []
        assert (refusing.stats.retried, refusing.stats.dead_lettered) == (0, 0)
        (fatal,) = [loop.fatal for loop in refusing.health().loops if loop.fatal is not None]
        assert isinstance(fatal, txmq.ConfigurationError)
        assert "synchronous" in str(fatal)
        working = consumer()
        with working:
            working.start()
            wait_for(lambda: message.id in applied, what="the message to be applied")
        with DeadLetters(broker, group=group, topic=topic) as dead_letters:
            assert dead_letters.list() == []
    finally:
        metadata.drop_all(engine)
        engine.dispose()
        asyncio.run(async_engine.dispose())
