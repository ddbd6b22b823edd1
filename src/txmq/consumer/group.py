"""What the threaded and the asyncio consumer share: a group's options, its handlers by
topic, the routes and the workers' :class:`~txmq.consumer.worker.Plan`, its adapter, and the
stats and health of its workers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

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

LoopT = TypeVar("LoopT", bound=Supervised)


def check_worker_options(
    prefetch: int | None, batch_size: int, concurrency: int, poll_interval: float
) -> None:
    """Raise :class:`ConfigurationError` unless the workers' numbers make sense."""
    if (prefetch is not None and prefetch < 1) or batch_size < 1 or concurrency < 1:
        raise ConfigurationError("prefetch, batch_size and concurrency must be at least 1")
    if prefetch is not None and batch_size > prefetch:
        raise ConfigurationError("batch_size cannot exceed prefetch")
    if poll_interval <= 0:
        raise ConfigurationError("poll_interval must be positive")


class ConsumerGroup(Generic[LoopT]):
    """The base of :class:`txmq.Consumer` and :class:`txmq.aio.AsyncConsumer` (whose
    docstrings describe the arguments): everything but how workers run and what a handler is.

    Handlers are registered as the workers call them (``fn(message, session)`` with a
    synchronous :class:`~sqlalchemy.orm.Session`); the asyncio consumer wraps its ``async
    def`` handlers before registering them. ``LoopT`` is the kind of the workers' supervised
    loops, which the subclass keeps in ``_loops``.

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
        batch_size: int,
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
        self._declare = declare
        self.poll_interval = poll_interval
        self.publish_timeout = publish_timeout
        self._handlers: dict[str, tuple[Handler, RetryPolicy | None, bool | None]] = {}
        self._stats = ConsumerStats(group=self.group)
        self._loops: list[LoopT] = []
        self._adapter: Adapter | None = None
        self._owns_adapter = False
        self._lock = threading.Lock()

    # -- handlers and routes ------------------------------------------------------------

    def _register(
        self, topic: str, fn: Handler, retry: RetryPolicy | None, compensate: bool | None
    ) -> None:
        """Make ``fn`` the handler of ``topic`` (a name the caller validated).

        Raises:
            ConfigurationError: the consumer has started, or ``topic`` has a handler already.
        """
        with self._lock:
            if self._loops:
                raise ConfigurationError("register handlers before starting the consumer")
            if topic in self._handlers:
                raise ConfigurationError(f"topic {topic!r} already has a handler")
            self._handlers[topic] = (fn, retry, compensate)

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

    def _check_startable(self) -> None:
        """Raise :class:`ConfigurationError` if no handler is registered or the workers run."""
        if not self._handlers:
            raise ConfigurationError("register at least one handler before starting")
        if self.running:
            raise ConfigurationError("consumer already started")

    def _plan(
        self,
        adapter: Adapter,
        *,
        engine: Engine,
        session_factory: Callable[[], Session] | None,
        stop: threading.Event,
    ) -> Plan:
        """What every worker of this consumer reads: the routes by source on ``adapter``,
        the inbox, the numbers, the shared stats and ``stop``."""
        routes: dict[str, Route] = {}
        for topic in self._handlers:
            route = self._route(topic)
            for source in adapter.sources_for([route.topology]):
                routes[source] = route
        return Plan(
            adapter=adapter,
            group=self.group,
            routes=routes,
            inbox=Inbox(self.inbox_table, self.group),
            engine=engine,
            session_factory=session_factory,
            prefetch=self.worker_prefetch(adapter),
            batch_size=self.batch_size,
            poll_interval=self.poll_interval,
            publish_timeout=self.publish_timeout,
            stats=self._stats,
            stop=stop,
        )

    def worker_prefetch(self, adapter: Adapter) -> int:
        """The prefetch each worker subscribes with on ``adapter``: ``prefetch`` if given,
        else ``batch_size`` for several workers competing for one queue, else 100."""
        if self.prefetch is not None:
            return self.prefetch
        if adapter.capabilities.competing_consumers and self.concurrency > 1:
            return self.batch_size
        return max(DEFAULT_PREFETCH, self.batch_size)

    # -- the adapter --------------------------------------------------------------------

    def _connect(self) -> Adapter:
        if self._adapter is None:
            if isinstance(self._broker, Adapter):
                self._adapter = self._broker
            else:
                self._adapter = connect(self._broker)
                self._owns_adapter = True
        return self._adapter

    def _release_adapter(self) -> Adapter | None:
        """Forget the adapter if this consumer connected it, and return it for the caller
        to close; None if it was given (the caller's to close) or is not connected."""
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
        return any(loop.alive for loop in self._loops)

    def health(self) -> Health:
        """How the workers are doing (see :mod:`txmq.supervision`)."""
        return health_of(self._loops)

    def healthy(self) -> bool:
        """False once a worker has died (a fatal error or an unexpected exception)."""
        return self.health().healthy

    def __repr__(self) -> str:
        return f"{type(self).__name__}(group={self.group!r}, topics={sorted(self._handlers)})"
