"""One consumer thread: poll, run handlers in inbox-protected transactions, settle.

The order of effects is what makes processing effectively-once:

1. the inbox row and the handler's writes commit in one DB transaction;
2. only then is the delivery acknowledged (RabbitMQ ack / Kafka offset commit);
3. a failure first publishes the retry or DLQ copy (broker-confirmed), then acknowledges
   the original. Before a DLQ copy is sent, a ``dead`` inbox row is committed, so a late
   duplicate of a dead-lettered (and maybe compensated) message is never applied: it is
   forwarded to the DLQ again instead.

A crash between any two steps leads to a redelivery that the inbox turns into a no-op
(or a repeated forward, which the replay generation and compensation ids deduplicate).

What is not the group's to handle yet, or at all (a retry that is not due, another
group's DLQ replay), never comes out of the subscription: the adapter withholds it and
the worker only counts it (:meth:`~txmq.adapters.base.Subscription.withheld`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from txmq.adapters.base import (
    Adapter,
    Publisher,
    Subscription,
    Topology,
)
from txmq.adapters.names import dead_letter_queue, retry_queue
from txmq.config import describe
from txmq.consumer.compensation import compensation_event
from txmq.consumer.inbox import Inbox, InboxEntry
from txmq.consumer.policy import RetryPolicy
from txmq.consumer.stats import ConsumerStats
from txmq.consumer.transactions import Transactions
from txmq.database_errors import is_outage, retry_lock_conflicts
from txmq.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    TxmqError,
)
from txmq.message import Message
from txmq.sql.tables import STATUS_DEAD
from txmq.supervision import SupervisedLoop
from txmq.telemetry import CONSUME_SECONDS
from txmq.tracing import ATTEMPT, message_span, untraced
from txmq.wire import (
    Delivery,
    dead_letter_copy,
    error_text,
    error_type,
    inbox_key,
    parse_attempt,
    raw_dead_letter,
    retry_copy,
)

log = logging.getLogger("txmq.consumer")

Handler = Callable[[Message, Session], None]

#: Longest reconnect back-off after a broker error.
_MAX_BACKOFF = 15.0


@dataclass(frozen=True, slots=True)
class Route:
    """Where deliveries of one (group, topic) go."""

    topology: Topology
    handler: Handler
    policy: RetryPolicy
    compensate: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a worker thread needs; shared read-only by all workers of a consumer."""

    adapter: Adapter
    group: str
    routes: Mapping[str, Route]
    inbox: Inbox
    engine: Engine
    session_factory: Callable[[], Session] | None
    prefetch: int
    #: Most messages per transaction (1: one transaction per message).
    batch_size: int
    poll_interval: float
    publish_timeout: float | None
    stats: ConsumerStats
    stop: threading.Event
    #: ``batch_size="auto"``: a poll that brings one message runs it alone (acknowledged
    #: at once); one that brings several runs them in transactions of up to ``batch_size``.
    adaptive: bool = False


@dataclass(slots=True)
class _Item:
    delivery: Delivery
    route: Route
    message: Message
    key: str


class Worker:
    """Consumes with its own subscription and publisher (one connection per thread).

    :meth:`supervised` runs it in a thread. Another runner (the asyncio consumer) drives
    :meth:`step` and :meth:`disconnect` itself, and may override :meth:`open_subscription`
    and :meth:`open_publisher` to wrap the broker connections the worker opens.
    """

    def __init__(self, plan: Plan, name: str) -> None:
        self.plan = plan
        self.name = name
        self._subscription: Subscription | None = None
        self._publisher: Publisher | None = None
        self._transactions = Transactions(plan.engine, plan.session_factory)
        self._handler_ok_seconds = CONSUME_SECONDS.labels(plan.group, "ok")
        self._handler_error_seconds = CONSUME_SECONDS.labels(plan.group, "error")

    # -- lifecycle ----------------------------------------------------------------------

    def supervised(self) -> SupervisedLoop:
        """This worker as a supervised loop (not started): it consumes until the plan's
        stop event is set, reconnecting after broker and database outages."""
        return SupervisedLoop(
            name=self.name,
            step=self.step,
            stop=self.plan.stop,
            on_error=lambda exc: self.disconnect(),
            on_exit=self.disconnect,
            max_backoff=_MAX_BACKOFF,
        )

    def step(self) -> bool:
        """One poll (which waits up to the poll interval) and the handling of what came;
        True if something came. Opens the subscription first if none is open.

        Raises:
            BrokerError, DatabaseUnavailable: transient (disconnect, back off, step again).
            ConfigurationError: fatal (the worker cannot go on).
        """
        plan = self.plan
        if self._subscription is None:
            self._subscription = self.open_subscription()
        subscription = self._subscription
        deliveries = subscription.poll(
            plan.poll_interval, max(plan.batch_size, min(plan.prefetch, 100))
        )
        withheld = subscription.withheld()
        if withheld.held:
            plan.stats.add("held", withheld.held)
        if withheld.skipped:
            plan.stats.add("skipped", withheld.skipped)
        if deliveries:
            self._handle(subscription, deliveries)
        return bool(deliveries)

    def open_subscription(self) -> Subscription:
        """Open this worker's subscription to the plan's sources (an extension point: the
        asyncio consumer overrides it to run the subscription's calls in a thread)."""
        plan = self.plan
        return plan.adapter.subscribe(plan.group, list(plan.routes), prefetch=plan.prefetch)

    def open_publisher(self) -> Publisher:
        """Open the publisher of this worker's retry, DLQ and compensation copies, on first
        need (an extension point, like :meth:`open_subscription`)."""
        return self.plan.adapter.publisher()

    def disconnect(self) -> None:
        """Close the subscription (what it held is redelivered), the publisher and the
        database connection; the next :meth:`step` opens them again. A txmq error while
        closing the broker connections is logged (debug), not raised."""
        for closable in (self._subscription, self._publisher):
            if closable is not None:
                try:
                    closable.close()
                except TxmqError as exc:
                    log.debug("%s: error while closing: %s", self.name, exc)
        self._subscription = self._publisher = None
        self._transactions.close()

    # -- one polled batch ---------------------------------------------------------------

    def _handle(self, subscription: Subscription, deliveries: Sequence[Delivery]) -> None:
        settled: list[Delivery] = []
        try:
            items = self._triage(subscription, deliveries, settled)
            if self.plan.batch_size > 1 and (len(items) > 1 or not self.plan.adaptive):
                self._process_batches(subscription, items, settled)
            else:
                # Each message is acknowledged as soon as it is settled, not once per poll:
                # acks held behind a slow handler, or lost to a crash, would mean redelivery
                # of everything applied since the poll.
                self._ack_now(subscription, settled)
                for item in items:
                    if self.plan.stop.is_set():
                        break
                    self._process_one(item, settled)
                    self._ack_now(subscription, settled)
        finally:
            # Whatever was committed is acknowledged even if a later message hit a broker
            # error; what was not reached is redelivered when the subscription closes.
            if settled:
                subscription.ack(settled)

    @staticmethod
    def _ack_now(subscription: Subscription, settled: list[Delivery]) -> None:
        if settled:
            subscription.ack(settled)
            settled.clear()

    def _triage(
        self, subscription: Subscription, deliveries: Sequence[Delivery], settled: list[Delivery]
    ) -> list[_Item]:
        """Give back what came from an unexpected source, dead-letter what is undecodable,
        return the rest."""
        held: list[Delivery] = []
        items: list[_Item] = []
        now = time.time()
        for delivery in deliveries:
            route = self.plan.routes.get(delivery.source)
            if route is None:
                log.error("%s: delivery from unexpected source %r", self.name, delivery.source)
                held.append(delivery)
            elif delivery.message is None:
                self._dead_letter_raw(delivery, route, now)
                settled.append(delivery)
            else:
                message = delivery.message
                items.append(_Item(delivery, route, message, inbox_key(message)))
        if held:
            self.plan.stats.add("held", len(held))
            subscription.release(held)
        return items

    def _process_batches(
        self, subscription: Subscription, items: list[_Item], settled: list[Delivery]
    ) -> None:
        size = self.plan.batch_size
        for start in range(0, len(items), size):
            if self.plan.stop.is_set():
                break
            self._process_batch(items[start : start + size], settled)
            subscription.ack(settled)  # one ack (multiple-ack / one commit) per batch
            settled.clear()

    # -- processing ---------------------------------------------------------------------

    def _process_one(self, item: _Item, settled: list[Delivery]) -> None:
        plan = self.plan

        def apply() -> tuple[bool, InboxEntry | None]:
            with self._transactions.begin() as (session, connection):
                if plan.inbox.claim(connection, item.key, item.message.topic):
                    self._run_handler(item, session)
                    return True, None
                return False, plan.inbox.lookup(connection, [item.key]).get(item.key)

        try:
            # A deadlock or lock wait timeout (the inbox's or the handler's own statements)
            # is no failure of the message: its transaction is rolled back and runs again.
            fresh, entry = retry_lock_conflicts(apply, f"{self.name}: {item.message.id}")
        except HandlerRaised as raised:
            _raise_if_outage(raised.error)
            self._failed(item, raised.error)
        except ConfigurationError:
            # txmq's own transaction cannot run (missing tables, an asyncio session): not
            # the message's fault, so it is neither retried nor dead-lettered. The worker
            # stops on it (fatal) and the message stays unacknowledged for the broker to
            # redeliver.
            raise
        except Exception as exc:
            _raise_if_outage(exc)
            self._failed(item, exc)
        else:
            if fresh:
                plan.stats.add("processed")
            elif entry is not None and entry.dead:
                self._forward_dead(item, entry)
            else:
                plan.stats.add("duplicates")
        settled.append(item.delivery)

    def _run_handler(self, item: _Item, session: Session) -> None:
        started = time.perf_counter()
        histogram = self._handler_error_seconds
        message = item.message
        try:
            if untraced(message):  # no span to make (the common case): no attributes either
                item.route.handler(message, session)
            else:
                with self._span("process", message, attempt=parse_attempt(message.headers)):
                    item.route.handler(message, session)  # the span records what it raises
            histogram = self._handler_ok_seconds
        except Exception as exc:
            raise HandlerRaised(exc) from exc
        finally:
            histogram.observe(time.perf_counter() - started)

    def _process_batch(self, items: list[_Item], settled: list[Delivery]) -> None:
        plan = self.plan
        dead: dict[str, InboxEntry] = {}
        ran = 0
        try:
            with self._transactions.begin() as (session, connection):
                fresh = plan.inbox.claim_many(
                    connection, [(item.key, item.message.topic) for item in items]
                )
                for item in items:
                    if item.key in fresh:
                        fresh.discard(item.key)  # a key twice in one batch runs once
                        self._run_handler(item, session)
                        ran += 1
                if ran < len(items):
                    found = plan.inbox.lookup(connection, {item.key for item in items})
                    dead = {key: entry for key, entry in found.items() if entry.dead}
        except ConfigurationError:
            raise  # as in _process_one
        except Exception as exc:
            error = exc.error if isinstance(exc, HandlerRaised) else exc
            _raise_if_outage(error)
            log.info(
                "%s: batch of %d failed (%s); redoing one by one",
                *(self.name, len(items), error_text(error)),
            )
            plan.stats.add("batch_fallbacks")
            for item in items:
                self._process_one(item, settled)
            return
        plan.stats.add("processed", ran)
        plan.stats.add("duplicates", len(items) - ran - len(dead))
        for item in items:
            if item.key in dead:
                self._forward_dead(item, dead.pop(item.key))
            settled.append(item.delivery)

    # -- failures -----------------------------------------------------------------------

    def _failed(self, item: _Item, exc: Exception) -> None:
        policy = item.route.policy
        attempt = parse_attempt(item.message.headers)
        etype, etext = error_type(exc), error_text(exc)
        if policy.is_final(exc, attempt):
            log.warning(
                "%s: message %s on %r failed for good at attempt %d: %s: %s",
                *(self.name, item.message.id, item.message.topic, attempt, etype, etext),
                extra={
                    "message_id": item.message.id,
                    "group": self.plan.group,
                    "topic": item.message.topic,
                    "state": "dead",
                    "attempt": attempt,
                },
            )
            entry = self._mark_dead(item, etype, etext)
            if entry is not None and not entry.dead:
                # Another copy of the message (a duplicate publish, in another worker or
                # instance) committed while this one was failing: it was applied, so it
                # is neither dead-lettered nor compensated.
                self.plan.stats.add("duplicates")
                return
            self._dead_letter(item, etype, etext, attempt)
            return
        stage = policy.stage(attempt)
        copy = retry_copy(
            item.message,
            error_type=etype,
            error_message=etext,
            attempt=attempt,
            delay=policy.delay(attempt),
            now=time.time(),
        )
        log.debug("%s: retrying %s (attempt %d failed: %s)", self.name, copy.id, attempt, etype)
        topology = item.route.topology
        queue = retry_queue(topology.group, topology.topic, stage)
        with self._span("retry", copy, destination=queue, attempt=attempt, error=etype):
            self._send(queue, copy)
        self.plan.stats.add("retried")

    def _mark_dead(self, item: _Item, etype: str, etext: str) -> InboxEntry | None:
        """Commit the ``dead`` inbox row; return the row found instead if one exists."""
        with self._transactions.begin() as (_, connection):
            inbox = self.plan.inbox
            if inbox.claim(
                connection, item.key, item.message.topic, status=STATUS_DEAD, error=(etype, etext)
            ):
                return None
            return inbox.lookup(connection, [item.key]).get(item.key)

    def _forward_dead(self, item: _Item, entry: InboxEntry) -> None:
        """A redelivery of a message already marked dead: make sure it reached the DLQ."""
        self._dead_letter(
            item,
            entry.error_type or "unknown",
            entry.error_message or "",
            parse_attempt(item.message.headers),
        )

    def _dead_letter(self, item: _Item, etype: str, etext: str, attempt: int) -> None:
        topology = item.route.topology
        compensation_id = None
        if item.route.compensate:
            event = compensation_event(item.message, topology.group, etype, etext)
            if event is not None:
                with self._span("compensate", event, destination=event.topic, error=etype):
                    compensation_id = self._compensate(event)
        copy = dead_letter_copy(
            item.message,
            group=topology.group,
            error_type=etype,
            error_message=etext,
            attempt=attempt,
            now=time.time(),
            compensation_id=compensation_id,
        )
        queue = topology.dead_letter_queue
        with self._span("dead_letter", copy, destination=queue, attempt=attempt, error=etype):
            self._send(queue, copy)
        self.plan.stats.add("dead_lettered")

    def _span(
        self,
        operation: str,
        message: Message,
        *,
        destination: str | None = None,
        attempt: int | None = None,
        error: str | None = None,
    ) -> AbstractContextManager[None]:
        """The trace span of ``operation`` on ``message`` (see :func:`message_span`)."""
        attributes: dict[str, str | int] = {}
        if attempt is not None:
            attributes[ATTEMPT] = attempt
        if error is not None:
            attributes["txmq.error.type"] = error
        return message_span(
            operation,
            message,
            group=self.plan.group,
            system=self.plan.adapter.system,
            destination=destination,
            attributes=attributes,
        )

    def _compensate(self, event: Message) -> str:
        """Publish the compensation event; raise if the broker did not confirm it.

        With no compensation consumer yet, the broker holds the event like any message (in
        its Kafka topic, in RabbitMQ's unroutable queue) until one starts. A failure leaves
        the original unacknowledged: it is redelivered and compensated again (same id).
        """
        outcome = self._publisher_().publish([event], timeout=self.plan.publish_timeout)[0]
        if outcome.error is not None:
            raise outcome.error
        self.plan.stats.add("compensations")
        return event.id

    def _dead_letter_raw(self, delivery: Delivery, route: Route, now: float) -> None:
        reason = delivery.decode_error or ValueError("undecodable message")
        copy = raw_dead_letter(
            topic=route.topology.topic,
            group=route.topology.group,
            body=delivery.raw_body,
            headers=delivery.raw_headers,
            reason=error_text(reason),
            error_type=error_type(reason),
            now=now,
        )
        log.warning(
            "%s: undecodable message on %r dead-lettered as %s: %s",
            *(self.name, delivery.source, copy.id, error_text(reason)),
        )
        self._send(dead_letter_queue(route.topology.group, route.topology.topic), copy)
        self.plan.stats.add("dead_lettered")

    def _send(self, queue: str, message: Message) -> None:
        outcome = self._publisher_().send_to_queue(
            queue, [message], timeout=self.plan.publish_timeout
        )[0]
        if outcome.error is not None:
            # Not confirmed: do not ack the original; it is redelivered after reconnecting.
            raise outcome.error

    def _publisher_(self) -> Publisher:
        if self._publisher is None:
            self._publisher = self.open_publisher()
        return self._publisher


class HandlerRaised(Exception):
    """What a handler raised, told apart from txmq's own statements around it: an error of
    the handler is the message's failure (retried, then dead-lettered), whatever its type,
    while a :class:`ConfigurationError` of txmq's own statements stops the worker."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


def _raise_if_outage(exc: Exception) -> None:
    """A lost database is not the handler's failure: spend no attempt on it.

    Raises:
        DatabaseUnavailable: ``exc`` is (or was caused by) a database outage. The worker
            then backs off and reconnects; the deliveries not settled are given back and
            delivered again once the database is back.
    """
    if is_outage(exc):
        raise DatabaseUnavailable(f"the database is unavailable: {describe(exc)}") from exc
