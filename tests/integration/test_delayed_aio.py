"""Delayed messages through :meth:`txmq.aio.AsyncProducer.stage`: the same ``deliver_at`` /
``delay`` keywords as the synchronous producer, on asyncpg and aiosqlite, with RabbitMQ and
Kafka relaying the message once it is due."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

import txmq
from txmq.aio import AsyncProducer
from txmq.outbox import make_outbox_tables
from txmq.testing import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.database]


@dataclass
class Database:
    engine: Engine
    async_url: str
    tables: txmq.OutboxTables


@pytest.fixture(params=["asyncpg", "aiosqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "aiosqlite":
        sync_url = f"sqlite:///{tmp_path / 'app.db'}"
        async_url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    else:
        sync_url = request.getfixturevalue("database_url")
        url = create_engine(sync_url).url.set(drivername="postgresql+asyncpg")
        async_url = url.render_as_string(hide_password=False)
    engine = create_engine(sync_url)
    metadata = MetaData()
    tables = make_outbox_tables(metadata, prefix=f"da{uuid.uuid4().hex[:8]}_")
    metadata.create_all(engine)
    yield Database(engine, async_url, tables)
    metadata.drop_all(engine)
    engine.dispose()


def test_async_stage_takes_deliver_at_and_delay(database: Database, broker: txmq.Adapter) -> None:
    topic = f"delayed.aio.{uuid.uuid4().hex[:8]}"
    broker.declare([txmq.Topology("reader", topic)])
    due = datetime.now(UTC) + timedelta(seconds=1)
    later, also_later = txmq.Message(topic, b"at"), txmq.Message(topic, b"in")

    async def scenario() -> AsyncProducer:
        engine = create_async_engine(database.async_url)
        producer = AsyncProducer(group="g", engine=engine, broker=broker, tables=database.tables)
        try:
            async with AsyncSession(engine) as session, session.begin():
                await producer.stage(session, later, deliver_at=due)
                await producer.stage(session, also_later, delay=timedelta(seconds=1))
            with pytest.raises(txmq.InvalidDelay):
                async with AsyncSession(engine) as session, session.begin():
                    await producer.stage(
                        session, txmq.Message(topic, b"x"), deliver_at=datetime.now()
                    )
        finally:
            await engine.dispose()
        return producer

    producer = asyncio.run(scenario())
    store = producer.producer.store
    assert store.counts() == {"DELAYED": 2}
    assert store.get(later.id).deliver_at == due
    relay = producer.producer.relay()
    # The delay counts from its stage call, after ``due`` was taken.
    last_due = max(due, store.get(also_later.id).deliver_at or due)
    wait_for(lambda: datetime.now(UTC) >= last_due, 10, "both due times")
    assert relay.drain() == 2
    assert store.counts() == {"SENT": 2}
    producer.producer.close()
