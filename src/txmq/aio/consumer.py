"""The asyncio consumer: ``async def`` handlers, the same inbox, retries, DLQ and compensation.

Each worker is an asyncio task that runs the synchronous consumer's own code
(:class:`txmq.consumer.worker.Worker`: triage, inbox claim, handler, settling, retry and
dead-letter decisions) inside a greenlet of SQLAlchemy's asyncio bridge. Its SQL goes
through the application's asyncio driver (asyncpg, psycopg async, aiosqlite), so waiting on
the database never blocks the event loop; its broker calls (pika, confluent-kafka) run in a
thread of the worker's own (:mod:`txmq.aio.bridge`), but for acks, which do not wait. The
handler is awaited on the event loop with an :class:`~sqlalchemy.ext.asyncio.AsyncSession`
joined to the transaction that also inserts the inbox row.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Connection, Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only, greenlet_spawn

from txmq.adapters import Adapter
from txmq.adapters.base import Publisher, Subscription
from txmq.aio.bridge import BridgedPublisher, BridgedSubscription, Threads
from txmq.aio.supervision import AsyncSupervisedLoop
from txmq.consumer.compensation import Compensation, compensation_topic
from txmq.consumer.group import BatchSize, ConsumerGroup
from txmq.consumer.policy import RetryPolicy
from txmq.consumer.worker import Handler, Plan, Worker
from txmq.errors import ConfigurationError
from txmq.message import Message

log = logging.getLogger("txmq.consumer")

#: ``async def handler(message, session)``: the session is an ``AsyncSession`` in the
#: transaction that also inserts the message's inbox row.
AsyncHandler = Callable[[Message, AsyncSession], Awaitable[None]]
AsyncCompensationHandler = Callable[[Compensation, AsyncSession], Awaitable[None]]

#: Longest reconnect back-off after a broker error (as the threaded workers').
_MAX_BACKOFF = 15.0


class AsyncConsumer(ConsumerGroup[AsyncSupervisedLoop, AsyncHandler]):
    """A consumer group with ``async def`` handlers: the asyncio twin of :class:`txmq.Consumer`.

    The semantics are :class:`txmq.Consumer`'s, by the same code: the handler runs in one
    database transaction with the insert of the inbox row ``(group, message id)``, the
    broker is acknowledged after the commit, failures are retried after the policy's delays
    and dead-lettered (with a compensation event when ``compensate``) when they fail for
    good, and a database outage spends no attempt.

    Args:
        broker: an adapter (not closed by the consumer) or a broker URL (connected at
            :meth:`start`, closed at :meth:`stop`); ``$TXMQ_BROKER_URL`` when omitted.
        engine: an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` on the consumer's database
            (``postgresql+asyncpg``, ``postgresql+psycopg``, ``sqlite+aiosqlite``).
        group, retry, prefetch, batch_size, compensate, inbox, declare, poll_interval,
        publish_timeout: as for :class:`txmq.Consumer`.
        concurrency: worker tasks, each with its own broker connection and database
            connection, and one thread for its broker calls.

    Raises:
        ConfigurationError: bad numbers or names, or ``engine`` is not an ``AsyncEngine``.

    Example:
        >>> consumer = AsyncConsumer(broker=url, engine=engine, group="cart")  # doctest: +SKIP
        >>> @consumer.handler("orders.created")
        ... async def on_order(message: Message, session: AsyncSession) -> None:
        ...     await session.execute(cart.insert().values(order=json.loads(message.body)["order"]))
        >>> await consumer.run()  # until stop(), SIGTERM or cancellation
    """

    def __init__(
        self,
        *,
        broker: Adapter | str | None = None,
        engine: AsyncEngine,
        group: str,
        retry: RetryPolicy | None = None,
        prefetch: int | None = None,
        batch_size: BatchSize = 1,
        concurrency: int = 1,
        compensate: bool = False,
        inbox: Table | None = None,
        declare: bool = True,
        poll_interval: float = 1.0,
        publish_timeout: float | None = None,
    ) -> None:
        super().__init__(
            broker=broker,
            group=group,
            retry=retry,
            prefetch=prefetch,
            batch_size=batch_size,
            concurrency=concurrency,
            compensate=compensate,
            inbox=inbox,
            declare=declare,
            poll_interval=poll_interval,
            publish_timeout=publish_timeout,
        )
        if not isinstance(engine, AsyncEngine):
            raise ConfigurationError(
                f"AsyncConsumer needs an AsyncEngine (create_async_engine), not "
                f"{type(engine).__name__}; use txmq.Consumer with a synchronous engine"
            )
        self.engine = engine
        self._stop = asyncio.Event()
        self._workers_stop = threading.Event()  # what the shared worker code looks at
        self._threads: list[Threads] = []

    # -- registration -------------------------------------------------------------------

    def worker_handler(self, topic: str, fn: AsyncHandler) -> Handler:
        """``async def fn(message, session)`` as the workers call it: awaited on the event
        loop with an ``AsyncSession`` joined to the worker's transaction.

        Raises:
            ConfigurationError: ``fn`` is not a coroutine function.
        """
        if not _is_coroutine_function(fn):
            raise ConfigurationError(
                f"the handler of {topic!r} must be an async def function; "
                "register synchronous handlers on txmq.Consumer"
            )
        return _in_greenlet(fn, self.engine)

    def compensation(
        self, producer_group: str, *, retry: RetryPolicy | None = None
    ) -> Callable[[AsyncCompensationHandler], AsyncCompensationHandler]:
        """Register ``async def fn(compensation, session)`` for ``producer_group``'s
        compensation events (topic ``<group>.compensation``), run once per failed message."""

        def register(fn: AsyncCompensationHandler) -> AsyncCompensationHandler:
            if not _is_coroutine_function(fn):
                raise ConfigurationError("a compensation handler must be an async def function")

            async def on_event(message: Message, session: AsyncSession) -> None:
                await fn(Compensation.from_message(message), session)

            self.add_handler(
                compensation_topic(producer_group), on_event, retry=retry, compensate=False
            )
            return fn

        return register

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Declare the topology and start the worker tasks on the running loop; return at once.

        Raises:
            ConfigurationError: no handler registered, or already started.
            BrokerUnavailable: the broker cannot be reached to declare the topology.
        """
        # In a thread: connecting to a broker URL may wait on the network.
        plan = await asyncio.to_thread(
            self.worker_plan,
            engine=self.engine.sync_engine,
            session_factory=None,
            stop=self._workers_stop,
        )
        if self.declare:
            await asyncio.to_thread(plan.adapter.declare, self.topologies())
        self._stop.clear()
        self._workers_stop.clear()
        self.workers, self._threads = [], []
        for index in range(self.concurrency):
            name = f"txmq-consumer-{self.group}-{index}"
            threads = Threads(name=name, size=1)
            self._threads.append(threads)
            self.workers.append(_AsyncWorker(plan, name, threads).on_event_loop(self._stop).start())
        log.info(
            "consumer %s started: %d worker task(s) on %s",
            *(self.group, self.concurrency, sorted(plan.routes)),
        )

    async def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop fetching, finish the message in hand, commit, ack, close.

        Deliveries fetched but not started are given back to the broker. Returns True when
        every worker finished within ``timeout`` seconds (the others are cancelled: what
        they held is redelivered).
        """
        self._stop.set()
        self._workers_stop.set()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        stopped = True
        for worker in self.workers:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            if not await worker.join(left):
                stopped = False
                worker.cancel()
                await worker.join(None)
        for threads in self._threads:
            threads.close()
        self._threads.clear()
        if (adapter := self.release_adapter()) is not None:
            await asyncio.to_thread(adapter.close)
        return stopped

    async def run(self) -> None:
        """Consume until :meth:`stop`, SIGTERM, or cancellation of the calling task (e.g.
        Ctrl-C under ``asyncio.run``); then stop gracefully.

        Raises:
            the exception that ended a worker (a fatal error such as
            :class:`~txmq.errors.DatabaseRefused`, or an unexpected ``BaseException``),
            after stopping the other workers.
        """
        loop = asyncio.get_running_loop()
        on_sigterm = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, self._stop.set)
            on_sigterm = True
        try:
            await self.start()
            while self.healthy():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.5)
                if self._stop.is_set():
                    break
        finally:
            await self.stop()
            if on_sigterm:
                loop.remove_signal_handler(signal.SIGTERM)
        for dead in self.health().dead:
            if dead.fatal is not None:
                raise dead.fatal

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class _AsyncWorker(Worker):
    """:class:`Worker` run in a greenlet on the event loop, its broker calls in ``threads``."""

    def __init__(self, plan: Plan, name: str, threads: Threads) -> None:
        super().__init__(plan, name)
        self._threads = threads

    def on_event_loop(self, stop: asyncio.Event) -> AsyncSupervisedLoop:
        """This worker as an asyncio supervised loop (not started)."""
        return AsyncSupervisedLoop(
            name=self.name,
            step=lambda: greenlet_spawn(self.step),
            stop=stop,
            on_error=lambda: greenlet_spawn(self.disconnect),
            on_exit=lambda: greenlet_spawn(self.disconnect),
            max_backoff=_MAX_BACKOFF,
        )

    def open_subscription(self) -> Subscription:
        return BridgedSubscription(self._threads.blocking(super().open_subscription), self._threads)

    def open_publisher(self) -> Publisher:
        return BridgedPublisher(self._threads.blocking(super().open_publisher), self._threads)


def _in_greenlet(fn: AsyncHandler, engine: AsyncEngine) -> Handler:
    """``fn`` as the synchronous handler the worker calls: it awaits ``fn`` on the event loop
    with an ``AsyncSession`` on the worker's connection, inside the worker's transaction."""

    def handler(message: Message, session: Session) -> None:
        # The worker's own session is bound to its connection, in the transaction: taken
        # from the bind, the connection does not start the unused sync session's own
        # transaction (which would then have to be closed after every message).
        bind = session.get_bind()
        sync_connection = bind if isinstance(bind, Connection) else session.connection()
        connection = AsyncConnection(engine, sync_connection=sync_connection)
        await_only(_handle(fn, message, connection))

    return handler


async def _handle(fn: AsyncHandler, message: Message, connection: AsyncConnection) -> None:
    # Bound to a connection inside a transaction, the session joins that transaction: it
    # neither commits nor rolls it back; the worker does, with the inbox row.
    async with AsyncSession(bind=connection) as session:
        await fn(message, session)
        await session.flush()


def _is_coroutine_function(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object whose __call__ is async def
    )
