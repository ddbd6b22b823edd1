"""The ``api`` axis of the suites: one scenario drives the synchronous API and :mod:`txmq.aio`.

A suite test that takes the ``api`` fixture runs twice, as ``sync`` and as ``async``. It
asks :class:`Api` for its producer, consumer, dead letters and transactions, and calls
them the synchronous way. On ``async`` they are the asyncio classes, each call awaited on
an event loop of the test's own (a thread), the scenario's handlers, executors and
checkers turned into ``async def`` ones, and the database reached through an asyncio
driver. So the async API passes the very same scenarios, and cannot drift from the sync
one unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from txmq.adapters import Adapter
from txmq.consumer import Consumer, DeadLetters
from txmq.message import Message
from txmq.outbox import Producer
from txmq.states import LocalTransactionState

T = TypeVar("T")

#: The APIs every ``api`` test runs on.
API_NAMES = ("sync", "async")

#: The asyncio driver the async API uses on a database, by backend.
ASYNC_DRIVERS = {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}

#: How long one awaited call may take before the test fails rather than hangs.
CALL_TIMEOUT = 300.0


class EventLoopThread:
    """An event loop running in a thread of its own, for blocking calls into async code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="txmq-contract-loop", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await ``coroutine`` on the loop; block until it is done and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(CALL_TIMEOUT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CALL_TIMEOUT)
        self.loop.close()


class Awaited:
    """An asyncio object whose coroutine methods are called as blocking ones.

    Attributes that are not methods (``stats``, ``group``) and methods that return no
    awaitable (``healthy()``, ``relay()``) are the async object's own.
    """

    def __init__(self, target: Any, loop: EventLoopThread) -> None:
        self.target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.target, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            return self._loop.run(_awaited(result)) if inspect.isawaitable(result) else result

        return call


class AwaitedDeadLetters(Awaited):
    """:class:`~txmq.aio.AsyncDeadLetters` used as a :class:`~txmq.DeadLetters`."""

    def __enter__(self) -> AwaitedDeadLetters:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AwaitedConsumer(Awaited):
    """:class:`~txmq.aio.AsyncConsumer` used as a :class:`~txmq.Consumer`: synchronous
    handlers ``fn(message, session)`` become ``async def`` ones that run ``fn`` on the
    handler's ``AsyncSession`` (``run_sync``: the same transaction, the same driver)."""

    def add_handler(self, topic: str, fn: Callable[[Message, Session], None], **kw: Any) -> None:
        self.target.add_handler(topic, _async_handler(fn), **kw)

    def handler(
        self, topic: str, **kw: Any
    ) -> Callable[[Callable[[Message, Session], None]], Callable[[Message, Session], None]]:
        def register(fn: Callable[[Message, Session], None]) -> Callable[[Message, Session], None]:
            self.add_handler(topic, fn, **kw)
            return fn

        return register

    def compensation(self, producer_group: str, **kw: Any) -> Callable[[Any], Any]:
        def register(fn: Callable[[Any, Session], None]) -> Callable[[Any, Session], None]:
            self.target.compensation(producer_group, **kw)(_async_handler(fn))
            return fn

        return register

    def __enter__(self) -> AwaitedConsumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class AwaitedProducer(Awaited):
    """:class:`~txmq.aio.AsyncProducer` used as a :class:`~txmq.Producer`: executors and
    local transactions become ``async def`` ones, sessions are :meth:`Api.transaction`'s."""

    @property
    def store(self) -> Any:
        return self.target.producer.store

    def stage(self, session: Awaited, *messages: Message) -> None:
        self._loop.run(self.target.stage(session.target, *messages))

    def send_in_transaction(
        self,
        message: Message,
        executor: Callable[[Message, Any], LocalTransactionState],
        arg: Any,
        **kw: Any,
    ) -> Any:
        async def execute(given: Message, argument: Any) -> LocalTransactionState:
            return executor(given, argument)

        return self._loop.run(self.target.send_in_transaction(message, execute, arg, **kw))

    def send_in_local_transaction(
        self, message: Message, work: Callable[[Session], Any], **kw: Any
    ) -> Any:
        async def local(session: Any) -> Any:
            return await session.run_sync(work)

        return self._loop.run(self.target.send_in_local_transaction(message, local, **kw))


class Api:
    """Makes the producer, consumer, dead letters and transactions of one API.

    Args:
        name: ``"sync"`` or ``"async"``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: EventLoopThread | None = None
        self._async_engines: list[Any] = []
        self._closers: list[Callable[[], None]] = []

    @property
    def is_async(self) -> bool:
        return self.name == "async"

    def _event_loop(self) -> EventLoopThread:
        if self._loop is None:
            self._loop = EventLoopThread()
        return self._loop

    def async_engine(self, engine: Engine) -> Any:
        """An :class:`~sqlalchemy.ext.asyncio.AsyncEngine` on ``engine``'s database (see
        :data:`ASYNC_DRIVERS`), disposed by :meth:`close`."""
        from sqlalchemy.ext.asyncio import create_async_engine

        url: URL = engine.url
        made = create_async_engine(url.set(drivername=ASYNC_DRIVERS[url.get_backend_name()]))
        self._async_engines.append(made)
        return made

    def dead_letters(self, broker: Adapter, *, group: str, topic: str) -> Any:
        """A :class:`~txmq.DeadLetters`, or an :class:`~txmq.aio.AsyncDeadLetters` used as one."""
        if not self.is_async:
            return DeadLetters(broker, group=group, topic=topic)
        from txmq.aio import AsyncDeadLetters

        return AwaitedDeadLetters(
            AsyncDeadLetters(broker, group=group, topic=topic), self._event_loop()
        )

    def consumer(self, *, engine: Engine, **options: Any) -> Any:
        """A :class:`~txmq.Consumer`, or an :class:`~txmq.aio.AsyncConsumer` (on the same
        database) used as one; stopped by :meth:`close` if the scenario did not."""
        if not self.is_async:
            return Consumer(engine=engine, **options)
        from txmq.aio import AsyncConsumer

        made = AwaitedConsumer(
            AsyncConsumer(engine=self.async_engine(engine), **options), self._event_loop()
        )
        self._closers.append(made.stop)
        return made

    def producer(self, *, engine: Engine, checker: Any = None, **options: Any) -> Any:
        """A :class:`~txmq.Producer`, or an :class:`~txmq.aio.AsyncProducer` (with an
        ``async def`` checker, on the same database) used as one; closed by :meth:`close`."""
        if not self.is_async:
            return Producer(engine=engine, checker=checker, **options)
        from txmq.aio import AsyncProducer

        async def check(message: Message, count: int) -> LocalTransactionState:
            assert checker is not None
            result: LocalTransactionState = checker(message, count)
            return result

        made = AwaitedProducer(
            AsyncProducer(
                engine=self.async_engine(engine),
                sync_engine=engine,
                checker=None if checker is None else check,
                **options,
            ),
            self._event_loop(),
        )
        self._closers.append(made.close)
        return made

    @contextlib.contextmanager
    def transaction(self, engine: Engine) -> Iterator[Any]:
        """A session in a transaction on ``engine``'s database (an ``AsyncSession`` used as
        a ``Session`` on ``async``): committed at the end unless the scenario ended it,
        rolled back when the block raises."""
        if not self.is_async:
            with Session(engine) as session:
                session.begin()
                yield session
                if session.in_transaction():
                    session.commit()
            return
        from sqlalchemy.ext.asyncio import AsyncSession

        awaited = Awaited(AsyncSession(self.async_engine(engine)), self._event_loop())
        try:
            awaited.begin()
            yield awaited
            if awaited.in_transaction():
                awaited.commit()
        finally:
            awaited.close()

    def close(self) -> None:
        """Stop what the scenario left running, dispose of the engines, end the loop."""
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()
        if self._loop is not None:
            for made in self._async_engines:
                self._loop.run(made.dispose())
            self._loop.close()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _async_handler(fn: Callable[[Any, Session], None]) -> Callable[[Any, Any], Any]:
    async def handler(value: Any, session: Any) -> None:
        await session.run_sync(lambda sync_session: fn(value, sync_session))

    return handler


@pytest.fixture(params=API_NAMES)
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    """The API the test drives: ``sync`` (txmq) or ``async`` (txmq.aio)."""
    made = Api(request.param)
    yield made
    made.close()


__all__ = ["api"]
