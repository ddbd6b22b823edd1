"""What the threaded and the asyncio consumer share: a group's options, its handlers by
topic, the routes and the workers' :class:`~txmq.consumer.worker.Plan`, its adapter, and the
stats and health of its workers."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from sqlalchemy import Engine, Table
from sqlalchemy.orm import Session

from txmq.adapters import Adapter, Topology, connect
from txmq.consumer.inbox import Inbox
from txmq.consumer.policy import RetryPolicy
from txmq.consumer.stats import ConsumerStats, StatsSnapshot
from txmq.consumer.worker import Handler, Plan, Route
from txmq.errors import ConfigurationError
from txmq.message import validate_name
from txmq.sql.tables import default_inbox_table
from txmq.supervision import Health, Supervised, health_of

#: Deliveries a worker holds when nothing says otherwise (see ``Consumer(prefetch=...)``).
DEFAULT_PREFETCH = 100
#: Most messages one transaction takes with ``batch_size="auto"`` (also bounded by the
#: worker's prefetch): a backlog is worked through in transactions of up to this many.
AUTO_BATCH_LIMIT = 100

#: ``Consumer(batch_size=...)``: a number of messages per transaction, or ``"auto"``.
BatchSize = int | Literal["auto"]

LoopT = TypeVar("LoopT", bound=Supervised)
#: A handler as the application registers it (the asyncio consumer's are ``async def``).
HandlerT = TypeVar("HandlerT")


def smallest_batch(batch_size: BatchSize) -> int:
    """The fewest messages a worker may need to hold at once: ``batch_size``, 1 for
    ``"auto"``.

    Raises:
        ConfigurationError: ``batch_size`` is neither a number of at least 1 nor ``"auto"``.
    """
    if batch_size == "auto":
        return 1
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f'batch_size must be at least 1 or "auto", not {batch_size!r}')
    return batch_size


def check_worker_options(
    prefetch: int | None, batch_size: BatchSize, concurrency: int, poll_interval: float
) -> None:
    """Raise :class:`ConfigurationError` unless the workers' numbers make sense."""
    smallest = smallest_batch(batch_size)
    if (prefetch is not None and prefetch < 1) or concurrency < 1:
        raise ConfigurationError("prefetch, batch_size and concurrency must be at least 1")
    if prefetch is not None and smallest > prefetch:
        raise ConfigurationError("batch_size cannot exceed prefetch")
    if poll_interval <= 0:
        raise ConfigurationError("poll_interval must be positive")


class ConsumerGroup(ABC, Generic[LoopT, HandlerT]):
    """The base of :class:`txmq.Consumer` and :class:`txmq.aio.AsyncConsumer` (whose
    docstrings describe the arguments): everything but how workers run and what a handler is.

    A subclass says what a handler is (``HandlerT``) by :meth:`worker_handler`, which
    turns one into what the workers call; it starts its workers from :meth:`worker_plan`
    and keeps their supervised loops (``LoopT``) in :attr:`workers`.

    Attributes:
        workers: the supervised loops of the workers last started (empty before start).
        declare: whether starting declares the queues/topics (the ``declare`` argument).

    Raises:
        InvalidMessage: ``group`` is not a valid name.
        ConfigurationError: the workers' numbers make no sense.
    """

    def __init__(
        self,
        *,
        broker: Adapter | str | None,
        group: str,
        retry: RetryPolicy | None,
        prefetch: int | None,
        batch_size: BatchSize,
        concurrency: int,
        compensate: bool,
        inbox: Table | None,
        declare: bool,
        poll_interval: float,
        publish_timeout: float | None,
    ) -> None:
        self.group = validate_name(group, "group")
        check_worker_options(prefetch, batch_size, concurrency, poll_interval)
        self._broker = broker
        self.retry = retry if retry is not None else RetryPolicy()
        self.prefetch = prefetch
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.compensate = compensate
        self.inbox_table = inbox if inbox is not None else default_inbox_table()
        self.declare = declare
        self.poll_interval = poll_interval
        self.publish_timeout = publish_timeout
        self._handlers: dict[str, tuple[Handler, RetryPolicy | None, bool | None]] = {}
        self._stats = ConsumerStats(group=self.group)
        self.workers: list[LoopT] = []
        self._adapter: Adapter | None = None
        self._owns_adapter = False
        self._lock = threading.RLock()

    # -- handlers and routes ------------------------------------------------------------

    def handler(
        self, topic: str, *, retry: RetryPolicy | None = None, compensate: bool | None = None
    ) -> Callable[[HandlerT], HandlerT]:
        """Register the decorated function as the handler of ``topic`` (one per topic), as
        :meth:`add_handler` does."""

        def register(fn: HandlerT) -> HandlerT:
            self.add_handler(topic, fn, retry=retry, compensate=compensate)
            return fn

        return register

    def add_handler(
        self,
        topic: str,
        fn: HandlerT,
        *,
        retry: RetryPolicy | None = None,
        compensate: bool | None = None,
    ) -> None:
        """Register ``fn(message, session)`` as the handler of ``topic``; ``retry`` and
        ``compensate`` override the consumer's.

        Raises:
            InvalidMessage: ``topic`` is not a valid name.
            ConfigurationError: ``fn`` is not a handler of this consumer's kind, ``topic``
                has a handler already, or the consumer has started.
        """
        validate_name(topic, "topic")
        handler = self.worker_handler(topic, fn)
        with self._lock:
            if self.workers:
                raise ConfigurationError("register handlers before starting the consumer")
            if topic in self._handlers:
                raise ConfigurationError(f"topic {topic!r} already has a handler")
            self._handlers[topic] = (handler, retry, compensate)

    @abstractmethod
    def worker_handler(self, topic: str, fn: HandlerT) -> Handler:
        """``fn`` as the workers call it: ``fn(message, session)`` in the inbox's transaction.

        Raises:
            ConfigurationError: ``fn`` cannot be the handler of ``topic``.
        """

    def topologies(self) -> list[Topology]:
        """The queues/topics this consumer needs, one topology per handled topic."""
        return [self._route(topic).topology for topic in self._handlers]

    def _route(self, topic: str) -> Route:
        fn, retry, compensate = self._handlers[topic]
        policy = retry if retry is not None else self.retry
        return Route(
            topology=Topology(self.group, topic, retry_delays=policy.delays),
            handler=fn,
            policy=policy,
            compensate=self.compensate if compensate is None else compensate,
        )

    def worker_plan(
        self,
        *,
        engine: Engine,
        session_factory: Callable[[], Session] | None,
        stop: threading.Event,
    ) -> Plan:
        """What every worker of this consumer reads, on :meth:`adapter` (connected now if
        need be): the routes by source, the inbox, the numbers, the shared stats, ``stop``.

        Raises:
            ConfigurationError: no handler registered, or the workers are running.
            InvalidURL: the broker URL is malformed.
        """
        if not self._handlers:
            raise ConfigurationError("register at least one handler before starting")
        if self.running:
            raise ConfigurationError("consumer already started")
        adapter = self.adapter()
        routes: dict[str, Route] = {}
        for topic in self._handlers:
            route = self._route(topic)
            for source in adapter.sources_for([route.topology]):
                routes[source] = route
        prefetch = self.worker_prefetch(adapter)
        return Plan(
            adapter=adapter,
            group=self.group,
            routes=routes,
            inbox=Inbox(self.inbox_table, self.group),
            engine=engine,
            session_factory=session_factory,
            prefetch=prefetch,
            batch_size=(
                min(prefetch, AUTO_BATCH_LIMIT) if self.batch_size == "auto" else self.batch_size
            ),
            adaptive=self.batch_size == "auto",
            poll_interval=self.poll_interval,
            publish_timeout=self.publish_timeout,
            stats=self._stats,
            stop=stop,
        )

    def worker_prefetch(self, adapter: Adapter) -> int:
        """The prefetch each worker subscribes with on ``adapter``: ``prefetch`` if given,
        else ``batch_size`` for several workers competing for one queue (1 for ``"auto"``),
        else 100."""
        if self.prefetch is not None:
            return self.prefetch
        smallest = smallest_batch(self.batch_size)
        if adapter.capabilities.competing_consumers and self.concurrency > 1:
            return smallest
        return max(DEFAULT_PREFETCH, smallest)

    # -- the adapter --------------------------------------------------------------------

    def adapter(self) -> Adapter:
        """The adapter this consumer works with; connected from its URL on first use (and
        closed when the consumer stops, then).

        Raises:
            InvalidURL: the broker URL is malformed.
        """
        with self._lock:
            if self._adapter is None:
                if isinstance(self._broker, Adapter):
                    self._adapter = self._broker
                else:
                    self._adapter = connect(self._broker)
                    self._owns_adapter = True
            return self._adapter

    def release_adapter(self) -> Adapter | None:
        """Forget the adapter if this consumer connected it, and return it for the stopping
        consumer to close; None if it was given (the application's to close) or is not
        connected."""
        with self._lock:
            if not self._owns_adapter or self._adapter is None:
                return None
            adapter, self._adapter, self._owns_adapter = self._adapter, None, False
            return adapter

    # -- stats and health ---------------------------------------------------------------

    @property
    def stats(self) -> StatsSnapshot:
        """What the consumer did so far (processed, duplicates, retried, dead-lettered...)."""
        return self._stats.snapshot()

    @property
    def running(self) -> bool:
        return any(loop.alive for loop in self.workers)

    def health(self) -> Health:
        """How the workers are doing (see :mod:`txmq.supervision`)."""
        return health_of(self.workers)

    def healthy(self) -> bool:
        """False once a worker has died (a fatal error or an unexpected exception)."""
        return self.health().healthy

    def __repr__(self) -> str:
        return f"{type(self).__name__}(group={self.group!r}, topics={sorted(self._handlers)})"
