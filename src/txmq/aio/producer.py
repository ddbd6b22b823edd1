"""The asyncio producer: stage in an ``AsyncSession``, half messages with ``async def``
executors and checkers, self-answering local transactions on an ``AsyncSession``.

It runs the synchronous :class:`txmq.Producer`'s own code, never a copy of it:

* :meth:`AsyncProducer.stage` runs ``Producer.stage`` inside the caller's transaction
  through ``AsyncSession.run_sync`` (its one INSERT goes through the asyncio driver);
* :meth:`AsyncProducer.send_in_transaction` runs ``Producer.send_in_transaction`` in a
  thread of the producer's bounded pool (the half record, its row lock or SQLite lease, a
  Kafka transaction), while the async executor runs on the event loop;
* :meth:`AsyncProducer.send_in_local_transaction` writes the transaction marker and awaits
  the function in one ``AsyncSession`` transaction on the application's async engine;
  preparing and settling the record are the synchronous producer's statements, in the pool.

The relay and the check-back are the synchronous producer's threads (:meth:`start`), or
the ``txmq worker`` process; an async checker is awaited on the event loop that started them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from txmq.adapters import Adapter
from txmq.aio.bridge import Threads
from txmq.database import same_database
from txmq.errors import ConfigurationError, TransactionError, TxmqError, WrongDatabase
from txmq.message import Message
from txmq.outbox.checkback import CheckBackPolicy
from txmq.outbox.producer import Producer, SendResult
from txmq.outbox.relay import Relay
from txmq.outbox.store import OutboxRecord
from txmq.sql.tables import OutboxTables
from txmq.states import LocalTransactionState
from txmq.supervision import Health

A = TypeVar("A")

#: ``async def executor(message, arg) -> LocalTransactionState``
AsyncExecutor = Callable[[Message, A], Awaitable[LocalTransactionState]]
#: ``async def checker(message, check_count) -> LocalTransactionState``
AsyncChecker = Callable[[Message, int], Awaitable[LocalTransactionState]]

#: The synchronous driver txmq's threads use on the database of an asyncio URL, by backend.
_SYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite"}


class AsyncProducer:
    """Transactional producer of one producer group, for asyncio applications.

    Args:
        group: the producer group.
        engine: the application's :class:`~sqlalchemy.ext.asyncio.AsyncEngine` on the
            outbox's database; :meth:`send_in_local_transaction` runs its transaction here.
        broker: adapter or URL, as for :class:`txmq.Producer`.
        sync_engine: the synchronous engine of the same database that txmq's threads (relay,
            check-back, half-message bookkeeping) use. By default one is made from
            ``engine``'s URL with the synchronous driver (``postgresql+psycopg``, ``sqlite``),
            and disposed by :meth:`close`.
        checker: ``async def checker(message, check_count)``, awaited on the event loop
            that called :meth:`start` (or :meth:`check_back_once`); a checker that raises,
            or does not answer within the check policy's ``interval``, counts as UNKNOWN.
        check_policy, tables, kafka_native, instance_id, max_body_bytes: as for
            :class:`txmq.Producer`.
        threads: most blocking calls (half messages in flight, operator queries) at once.

    Construction is synchronous: it connects to a broker URL and asks a Kafka broker its
    message size limit once (each within the connect timeout). On a running event loop,
    make it with ``await AsyncProducer.open(...)``, which does that in a thread.

    Raises:
        ConfigurationError: ``engine`` is not an ``AsyncEngine``, or no synchronous driver is
            known for its database (pass ``sync_engine``).
        WrongDatabase: ``sync_engine`` is on another database than ``engine``.
    """

    def __init__(
        self,
        *,
        group: str,
        engine: AsyncEngine,
        broker: Adapter | str | None = None,
        sync_engine: Engine | None = None,
        checker: AsyncChecker | None = None,
        check_policy: CheckBackPolicy | None = None,
        tables: OutboxTables | None = None,
        kafka_native: bool = True,
        instance_id: str | None = None,
        max_body_bytes: int | None = None,
        threads: int = 8,
    ) -> None:
        if not isinstance(engine, AsyncEngine):
            raise ConfigurationError(
                f"AsyncProducer needs an AsyncEngine (create_async_engine), not "
                f"{type(engine).__name__}; use txmq.Producer with a synchronous engine"
            )
        self.engine = engine
        self._owns_sync_engine = sync_engine is None
        self.sync_engine = sync_engine if sync_engine is not None else _sync_engine_for(engine)
        if not same_database(engine.url, self.sync_engine.url):
            raise WrongDatabase(
                f"sync_engine is on {self.sync_engine.url.render_as_string(hide_password=True)}"
                f", not on the async engine's {engine.url.render_as_string(hide_password=True)}"
            )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checker = checker
        policy = check_policy or CheckBackPolicy()
        self.producer = Producer(
            group=group,
            engine=self.sync_engine,
            broker=broker,
            checker=None if checker is None else self._check,
            check_policy=policy,
            tables=tables,
            kafka_native=kafka_native,
            instance_id=instance_id,
            max_body_bytes=max_body_bytes,
        )
        self.group = self.producer.group
        self._threads = Threads(name=f"txmq-aio-producer-{self.group}", size=threads)

    @classmethod
    async def open(cls, **options: Any) -> Self:
        """``AsyncProducer(**options)``, made in a thread so that connecting to the broker
        and asking Kafka its size limit do not hold up the event loop.

        Raises:
            what the constructor raises.
        """
        return await asyncio.to_thread(functools.partial(cls, **options))

    # -- outbox mode -----------------------------------------------------------------------

    async def stage(
        self,
        session: AsyncSession,
        *messages: Message,
        deliver_at: datetime | None = None,
        delay: timedelta | float | None = None,
    ) -> None:
        """Write ``messages`` to the outbox inside ``session``'s current transaction: they
        exist (READY) if and only if it commits. One INSERT, through the session's driver.
        ``deliver_at`` / ``delay``: delayed, exactly as :meth:`txmq.Producer.stage`.

        Raises:
            ConfigurationError: ``session`` is not an ``AsyncSession``.
            WrongDatabase: the session is on another database than the outbox's.
            InvalidMessage / MessageTooLarge: a message cannot be sent as given.
            InvalidDelay: as :meth:`txmq.Producer.stage`.
        """
        if not isinstance(session, AsyncSession):
            raise ConfigurationError(
                f"AsyncProducer.stage needs an AsyncSession, not {type(session).__name__}; "
                "use txmq.Producer.stage with a synchronous Session"
            )
        await session.run_sync(self._stage_sync, messages, deliver_at, delay)

    def _stage_sync(
        self,
        session: Session,
        messages: tuple[Message, ...],
        deliver_at: datetime | None,
        delay: timedelta | float | None,
    ) -> None:
        self.producer.stage(session, *messages, deliver_at=deliver_at, delay=delay)

    # -- half messages ---------------------------------------------------------------------

    async def send_in_transaction(
        self,
        message: Message,
        executor: AsyncExecutor[A],
        arg: A,
        *,
        immunity: timedelta | None = None,
    ) -> SendResult:
        """RocketMQ's ``sendMessageInTransaction`` with ``async def executor(message, arg)``.

        Exactly :meth:`txmq.Producer.send_in_transaction`: the PREPARED half record is
        durable before the executor runs, no check-back decides it while the executor runs,
        and an exception in the executor counts as UNKNOWN.

        Raises:
            InvalidMessage / MessageTooLarge, TransactionError, TxmqError: as
            :meth:`txmq.Producer.send_in_transaction`.
        """
        loop = asyncio.get_running_loop()

        def execute(given: Message, argument: A) -> LocalTransactionState:
            answer = _answer(executor(given, argument))
            return asyncio.run_coroutine_threadsafe(answer, loop).result()

        return await self._threads.run(
            self.producer.send_in_transaction, message, execute, arg, immunity=immunity
        )

    async def send_in_local_transaction(
        self,
        message: Message,
        work: Callable[[AsyncSession], Awaitable[Any]],
        *,
        immunity: timedelta | None = None,
    ) -> SendResult:
        """Await ``work(session)`` as the local transaction, on an ``AsyncSession`` of
        ``engine`` whose first statement is the transaction marker.

        Exactly :meth:`txmq.Producer.send_in_local_transaction`: no checker is needed, the
        outcome is never UNKNOWN once the transaction ended, and if ``work`` raises the
        message is discarded and the exception propagates.

        Raises:
            TransactionError: a check-back had rolled the message back before the local
                transaction could start (it then did nothing).
            InvalidMessage / MessageTooLarge: before anything is written.
        """
        producer = self.producer
        message = await self._threads.run(producer.prepare_local, message, immunity=immunity)
        try:
            async with AsyncSession(self.engine) as session, session.begin():
                standing = await session.run_sync(
                    lambda s: producer.store.insert_marker(
                        s.connection(), message.id, LocalTransactionState.COMMIT
                    )
                )
                if standing is not LocalTransactionState.COMMIT:
                    raise TransactionError(
                        f"message {message.id} was rolled back by a check-back before its "
                        "local transaction started"
                    )
                await work(session)
        except BaseException:
            # However it ended (work raised, the commit failed, the task was cancelled), the
            # marker says how; the settling runs to its end in the pool even if we are
            # cancelled again meanwhile.
            await asyncio.shield(self._threads.run(producer.settle_by_marker, message))
            raise
        to = await self._threads.run(producer.settle_committed, message.id)
        return SendResult(message.id, LocalTransactionState.COMMIT, to)

    def _check(self, message: Message, check_count: int) -> LocalTransactionState:
        """The check-back thread's checker: the async checker, awaited on the event loop."""
        loop, checker = self._loop, self._checker
        if loop is None or loop.is_closed() or checker is None:
            raise TxmqError("the event loop of the async checker is not running")
        future = asyncio.run_coroutine_threadsafe(_answer(checker(message, check_count)), loop)
        try:
            return future.result(self.producer.check_policy.interval.total_seconds())
        except TimeoutError:
            future.cancel()
            raise

    # -- check-back, relay, operators ------------------------------------------------------

    async def start(self, *, relay: bool = True, **relay_options: Any) -> Self:
        """Start the group's relay and check-back threads (those of :meth:`txmq.Producer.start`);
        the async checker is awaited on the running event loop. Stop with :meth:`close`."""
        self._loop = asyncio.get_running_loop()
        await self._threads.run(self.producer.start, relay=relay, **relay_options)
        return self

    async def check_back_once(self, limit: int = 50) -> int:
        """Answer the due check-backs of this group once; return how many were looked at.

        Raises:
            WorkerBusy: on SQLite, another check-back worker of the group is working.
        """
        self._loop = asyncio.get_running_loop()
        return await self._threads.run(self.producer.check_back_once, limit)

    def relay(self, **options: Any) -> Relay:
        """The synchronous :class:`Relay` of this group (see :meth:`txmq.Producer.relay`);
        run its blocking ``drain()`` with ``asyncio.to_thread``."""
        return self.producer.relay(**options)

    def health(self) -> Health:
        """How the relay and check-back threads are doing."""
        return self.producer.health()

    def healthy(self) -> bool:
        return self.producer.healthy()

    async def parked(self, limit: int = 100) -> list[OutboxRecord]:
        """PARKED records of this group, oldest first."""
        return await self._threads.run(self.producer.parked, limit)

    async def resume(self, message_id: str) -> None:
        """A new round of check-backs for a PARKED record. Raises ``RecordNotFound``."""
        await self._threads.run(self.producer.resume, message_id)

    async def commit(self, message_id: str) -> None:
        """Operator decision: a PARKED (or PREPARED) record committed. Raises ``RecordNotFound``."""
        await self._threads.run(self.producer.commit, message_id)

    async def rollback(self, message_id: str) -> None:
        """Operator decision: a PARKED (or PREPARED) record rolled back (discarded).

        Raises:
            RecordNotFound: no PARKED or PREPARED record of this group has that id.
        """
        await self._threads.run(self.producer.rollback, message_id)

    async def failed(self, limit: int = 100) -> list[OutboxRecord]:
        """FAILED records of this group (the broker refused them for good), oldest first."""
        return await self._threads.run(self.producer.failed, limit)

    async def retry(self, message_id: str) -> None:
        """Publish a FAILED record again. Raises ``RecordNotFound``."""
        await self._threads.run(self.producer.retry, message_id)

    async def discard(self, message_id: str) -> None:
        """Delete a FAILED record. Raises ``RecordNotFound``."""
        await self._threads.run(self.producer.discard, message_id)

    async def close(self) -> None:
        """Stop the threads, release broker connections the producer opened, dispose of the
        synchronous engine it made. Idempotent."""
        await asyncio.to_thread(self.producer.close)
        self._threads.close()
        if self._owns_sync_engine:
            self.sync_engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncProducer(group={self.group!r})"


async def _answer(answer: Awaitable[LocalTransactionState]) -> LocalTransactionState:
    return await answer


def _sync_engine_for(engine: AsyncEngine) -> Engine:
    """A synchronous engine on ``engine``'s database, through the backend's usual driver.

    Raises:
        ConfigurationError: no synchronous driver is known for the backend.
    """
    backend = engine.url.get_backend_name()
    driver = _SYNC_DRIVERS.get(backend)
    if driver is None:
        raise ConfigurationError(
            f"no synchronous driver known for {backend}: pass AsyncProducer(sync_engine=...)"
        )
    return create_engine(engine.url.set(drivername=driver))
