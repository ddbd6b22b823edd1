"""txmq.aio against the synchronous API it runs on, on the same database and broker.

* Staging: a one-row business transaction plus ``AsyncProducer.stage`` of one message in an
  ``AsyncSession`` (psycopg's asyncio mode, so the driver is the sync figure's), against
  the same transaction with one plain INSERT of the same row instead (target: within 10%,
  as for ``Producer.stage``), and against the synchronous ``Producer.stage`` (what asyncio
  costs here, no target).
* Consuming: ``AsyncConsumer`` per message (one transaction with the inbox row per message,
  one worker task, a do-nothing ``async def`` handler), against the synchronous
  ``Consumer`` doing the same (target: at least 0.8x).

Each measurement runs its own event loop (``asyncio.run``); the pool is warmed up first, as
the synchronous engine already is, so connecting is not counted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, Table, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import txmq
from benchmarks.harness import CpuClock, Rate
from txmq.aio import AsyncConsumer, AsyncProducer

#: The longest a consumer figure may take (the synchronous one's limit).
TIMEOUT = 600.0


def async_engine_for(engine: Engine) -> AsyncEngine:
    """An asyncio engine on ``engine``'s database through psycopg's asyncio mode."""
    return create_async_engine(engine.url.set(drivername="postgresql+psycopg"))


def async_business_transactions(
    engine: Engine,
    orders: Table,
    count: int,
    body: bytes,
    plain: tuple[Table, Callable[[], dict[str, object]]] | None = None,
) -> float:
    """Microseconds per one-row business transaction in an ``AsyncSession`` that also
    awaits ``stage()`` of one message, or, with ``plain`` (a table and what makes a row),
    that inserts a row instead (the asyncio twin of the staging baseline)."""

    async def measure() -> float:
        async_engine = async_engine_for(engine)
        producer = AsyncProducer(group="bench-stage", engine=async_engine, sync_engine=engine)
        try:

            async def transaction(i: int) -> None:
                async with AsyncSession(async_engine) as session, session.begin():
                    await session.execute(insert(orders).values(note=f"order {i}"))
                    if plain is None:
                        await producer.stage(session, txmq.Message("bench.stage", body))
                    else:
                        await session.execute(insert(plain[0]).values(plain[1]()))

            await transaction(-1)  # the pool's first connection is not counted
            loop = asyncio.get_running_loop()
            started = loop.time()
            for i in range(count):
                await transaction(i)
            return (loop.time() - started) / count * 1e6
        finally:
            await producer.close()
            await async_engine.dispose()

    return asyncio.run(measure())


def async_consumer_rate(
    adapter: txmq.Adapter, engine: Engine, name: str, count: int, **options: Any
) -> Rate:
    """The rate of an AsyncConsumer with a do-nothing handler over ``count`` messages."""
    from benchmarks.consumer import fill

    async def measure() -> Rate:
        async_engine = async_engine_for(engine)
        consumer = AsyncConsumer(
            broker=adapter, engine=async_engine, group=f"{name}-g", poll_interval=0.2, **options
        )
        clock: list[CpuClock] = []

        @consumer.handler(f"{name}.evt")
        async def handler(message: txmq.Message, session: AsyncSession) -> None:
            if not clock:
                clock.append(CpuClock())

        fill(adapter, consumer.topologies()[0], count)
        await consumer.start()
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        try:
            # Looked at every millisecond, as the synchronous figure's finish line is.
            while consumer.stats.processed < count:
                if asyncio.get_running_loop().time() > deadline or not consumer.healthy():
                    raise TimeoutError(f"{count} messages not consumed: {consumer.health()}")
                await asyncio.sleep(0.001)
            return clock[0].rate(count)
        finally:
            await consumer.stop()
            await async_engine.dispose()

    return asyncio.run(measure())


def sqlalchemy_commit_rates(engine: Engine, count: int) -> tuple[float, float]:
    """Commits/s of a single-row INSERT + COMMIT loop through SQLAlchemy, on a synchronous
    connection and then on an asyncio one to the same database (psycopg both times): the
    floor of what an asyncio consumer can reach against a synchronous one, since its
    handlers' sessions and the inbox go through SQLAlchemy's asyncio layer."""
    table = f"bench_sa_{uuid.uuid4().hex[:8]}"
    statement = text(f"INSERT INTO {table} (v) VALUES (:v)")
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {table} (id bigserial primary key, v varchar(80))"))
    try:
        with engine.connect() as connection:
            started = time.perf_counter()
            for i in range(count):
                with connection.begin():
                    connection.execute(statement, {"v": str(i)})
            sync_rate = count / (time.perf_counter() - started)

        async def measure() -> float:
            async_engine = async_engine_for(engine)
            try:
                async with async_engine.connect() as connection:
                    started = time.perf_counter()
                    for i in range(count):
                        async with connection.begin():
                            await connection.execute(statement, {"v": str(i)})
                    return count / (time.perf_counter() - started)
            finally:
                await async_engine.dispose()

        return sync_rate, asyncio.run(measure())
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP TABLE {table}"))
