"""The consumer: a group, its handlers, and the worker threads that run them."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, Self

from sqlalchemy import Engine, Table
from sqlalchemy.orm import Session

from txmq.adapters import Adapter
from txmq.consumer.compensation import Compensation, compensation_topic
from txmq.consumer.group import BatchSize, ConsumerGroup
from txmq.consumer.policy import RetryPolicy
from txmq.consumer.worker import Handler, Worker
from txmq.database import require_sync_engine
from txmq.message import Message
from txmq.supervision import SupervisedLoop

log = logging.getLogger("txmq.consumer")

CompensationHandlerFn = Callable[[Compensation, Session], None]


class Consumer(ConsumerGroup[SupervisedLoop, Handler]):
    """A consumer group: handlers run exactly once per message, or the message is dead-lettered.

    Each handler runs inside one transaction of ``engine``'s database, together with the
    insert of the inbox row ``(group, message id)``; a redelivered message finds its row and
    is acknowledged without running the handler. The broker is acknowledged only after the
    commit. A failing handler is retried after the policy's delays (the broker holds the
    message; nobody sleeps); when it fails for good the message goes to
    ``<group>.<topic>.dlq`` and, with ``compensate``, a compensation event goes back to the
    producer group named by ``x-txmq-producer-group``.

    The handler sees the attempt number as ``message.headers["x-txmq-attempt"]`` (``"1"`` on
    the first delivery; :func:`txmq.consumer.attempt_of` parses it).

    RabbitMQ: each worker's connection is driven by an IO thread of its subscription, which
    answers heartbeats while handlers run, so a handler (or a batch) may take longer than
    the heartbeat timeout (URL option ``heartbeat``, 60 s by default) without losing the
    connection or its messages.

    Args:
        broker: an adapter (not closed by the consumer) or a broker URL (the consumer
            connects and closes); ``$TXMQ_BROKER_URL`` when omitted.
        engine: the consumer's database (PostgreSQL first-class; SQLite works).
        group: the consumer group; every instance of a group shares its messages.
        retry: default retry policy of the handlers.
        prefetch: deliveries each worker holds (RabbitMQ ``basic.qos``; Kafka fetch-ahead
            and poll size). By default 100, except with several workers on RabbitMQ, where
            it is ``batch_size``: a worker's prefetched messages wait behind its current
            handler while the other workers could run them, so a slow message would hold
            up to 99 others. A larger value trades that for throughput. On Kafka, work
            spreads by partition whatever the prefetch (a slow message holds only the
            later messages of its partition: per-key order).
        batch_size: 1 = one transaction per message; ``n`` > 1 = up to ``n`` messages in one
            transaction and one ack; a failing batch is redone message by message.
            ``"auto"``: one transaction per message while the consumer keeps up (a poll
            brings one message), and when a poll brings several (a backlog), transactions
            of up to ``min(prefetch, 100)`` of them, with the same fallback. The default
            prefetch is that of ``batch_size=1``.
        concurrency: worker threads, each with its own connection.
        compensate: default of the handlers' ``compensate`` flag.
        inbox: the inbox table (from :func:`make_inbox_table`); ``txmq_inbox`` by default.
            Create it with :func:`txmq.create_schema` or your migrations.
        session_factory: makes the handler's ``Session`` (e.g. your ``sessionmaker``); by
            default a plain ``Session`` bound to a connection each worker keeps open.
            Either way the consumer owns the transaction: do not commit in the handler.
        declare: declare the queues/topics (work, retry stages, DLQ) at start.
        poll_interval: longest wait of one poll, i.e. the reaction time to :meth:`stop`.
        publish_timeout: seconds to wait for the broker to confirm retry/DLQ copies.

    Raises:
        ConfigurationError: on bad numbers or names, or an asyncio engine.

    Example:
        >>> consumer = Consumer(broker=url, engine=engine, group="cart")  # doctest: +SKIP
        >>> @consumer.handler("orders.created")
        ... def on_order(message: Message, session: Session) -> None:
        ...     session.add(CartItem(order=json.loads(message.body)["order"]))
        >>> consumer.run()  # until SIGTERM / SIGINT / consumer.stop()
    """

    def __init__(
        self,
        *,
        broker: Adapter | str | None = None,
        engine: Engine,
        group: str,
        retry: RetryPolicy | None = None,
        prefetch: int | None = None,
        batch_size: BatchSize = 1,
        concurrency: int = 1,
        compensate: bool = False,
        inbox: Table | None = None,
        session_factory: Callable[[], Session] | None = None,
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
        self.engine = require_sync_engine(engine, "a consumer")
        self._session_factory = session_factory
        self._stop = threading.Event()

    # -- registration -------------------------------------------------------------------

    def worker_handler(self, topic: str, fn: Handler) -> Handler:
        """``fn`` itself: the workers call a synchronous handler as it is."""
        return fn

    def compensation(
        self, producer_group: str, *, retry: RetryPolicy | None = None
    ) -> Callable[[CompensationHandlerFn], CompensationHandlerFn]:
        """Register the compensation handler of ``producer_group`` (topic ``<group>.compensation``).

        The decorated ``fn(compensation, session)`` runs once per failed original message,
        in an inbox-protected transaction like any handler.

        Example:
            >>> @consumer.compensation("bank")  # doctest: +SKIP
            ... def refund(c: Compensation, session: Session) -> None:
            ...     session.execute(update(Account).values(balance=Account.balance + amount))
        """

        def register(fn: CompensationHandlerFn) -> CompensationHandlerFn:
            def on_event(message: Message, session: Session) -> None:
                fn(Compensation.from_message(message), session)

            self.add_handler(
                compensation_topic(producer_group), on_event, retry=retry, compensate=False
            )
            return fn

        return register

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Declare the topology and start the worker threads; return at once.

        Raises:
            ConfigurationError: no handler registered, or already started.
            BrokerUnavailable: the broker cannot be reached to declare the topology.
        """
        with self._lock:
            plan = self.worker_plan(
                engine=self.engine, session_factory=self._session_factory, stop=self._stop
            )
            if self.declare:
                plan.adapter.declare(self.topologies())
            self._stop.clear()
            self.workers = [
                Worker(plan, f"txmq-consumer-{self.group}-{index}").supervised().start()
                for index in range(self.concurrency)
            ]
            log.info(
                "consumer %s started: %d worker(s) on %s",
                *(self.group, self.concurrency, sorted(plan.routes)),
            )

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop fetching, finish the message in hand, commit, ack, close.

        Deliveries fetched but not started are given back to the broker (redelivered to
        another instance or after a restart). Returns True when every worker has finished
        within ``timeout`` seconds.
        """
        self._stop.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for loop in self.workers:
            loop.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        stopped = not self.running
        if stopped and (adapter := self.release_adapter()) is not None:
            adapter.close()
        return stopped

    def run(self) -> None:
        """Consume until :meth:`stop`, SIGTERM or SIGINT; then stop gracefully.

        Signal handlers are installed only when called from the main thread (Python allows
        no other), and the previous handlers are restored on return.

        Raises:
            the exception that ended a worker (a fatal error such as
            :class:`~txmq.errors.DatabaseRefused`, or an unexpected ``BaseException``),
            after stopping the other workers: a consumer never idles with a dead worker.
        """
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            self.start()
            while not self._stop.wait(0.5) and self.healthy():
                pass
        finally:
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        for dead in self.health().dead:
            if dead.fatal is not None:
                raise dead.fatal

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("consumer %s: signal %d, stopping", self.group, signum)
        self._stop.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
