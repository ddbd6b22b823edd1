"""txmq for asyncio applications: the same transactional semantics, awaited.

* :class:`AsyncProducer`: ``await stage(async_session, ...)`` in your ``AsyncSession``
  transaction, half messages with ``async def`` executors and checkers, self-answering local
  transactions on an ``AsyncSession``, and the parked/failed record operations.
* :class:`AsyncConsumer`: ``async def handler(message, async_session)`` in one transaction
  with the inbox row, with the retries, dead-lettering and compensation of
  :class:`txmq.Consumer`; ``await run()``, or ``start()``/``stop()`` in a lifespan.
* :class:`AsyncDeadLetters`: list, show, replay and purge a group's DLQ, awaited.

Needs ``txmq[asyncio]`` (greenlet) and an asyncio database driver (asyncpg, psycopg,
aiosqlite). Broker I/O (pika, confluent-kafka) runs in threads of txmq's, never on the loop
(acks, which only hand over or send asynchronously, aside).
"""

from txmq.aio.consumer import AsyncCompensationHandler, AsyncConsumer, AsyncHandler
from txmq.aio.dlq import AsyncDeadLetters
from txmq.aio.producer import AsyncChecker, AsyncExecutor, AsyncProducer

__all__ = [
    "AsyncChecker",
    "AsyncCompensationHandler",
    "AsyncConsumer",
    "AsyncDeadLetters",
    "AsyncExecutor",
    "AsyncHandler",
    "AsyncProducer",
]
