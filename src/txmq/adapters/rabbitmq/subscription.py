"""RabbitMQ manual-ack subscription whose connection is driven by an IO thread it owns.

pika's ``BlockingConnection`` answers heartbeats only while some thread runs its event loop.
If the caller's thread ran it (between handlers), a handler longer than the heartbeat
timeout would lose the connection and, with it, every unacknowledged message. So the
connection belongs to one IO thread that runs the event loop all the time: it answers
heartbeats, puts what the broker pushes (up to ``prefetch`` unacknowledged messages) into a
buffer that :meth:`RabbitMQSubscription.poll` empties, and performs the acks and rejects that
the caller's thread hands it with ``add_callback_threadsafe``, the one thread-safe call of a
``BlockingConnection``.

An ack is handed over and not waited for: per-message acks would otherwise cost the caller
two thread switches each, and the ack only ever follows the work it settles (the consumer
commits first). Acks are written together, as one multiple-ack where contiguous: those
handed over while the IO thread is busy, and, while the caller still has deliveries to work
through, those of up to :data:`ACK_INTERVAL` (a turn of pika's event loop per ack cost
about as much CPU as the consumer's own work per message). Acks are written at once when
the caller has nothing left to poll (so a small prefetch never waits for them), when they
fill half the prefetch, or with a release; those still waiting when the subscription closes
are written before the connection closes. A release is waited for until it is written.

A subscription that is closed while its connection hangs (behind a partition, say) leaves
its IO thread to finish closing by itself, and until the broker has taken that close, it
still holds the subscription's unacknowledged messages: they are redelivered only then. A
new subscription to the same queue opened meanwhile would receive the messages published
after them first. So, in one process, a subscription to a queue waits for an earlier one
to that queue that is still closing, up to the connect timeout plus a second, and is then
refused with :class:`~txmq.errors.BrokerUnavailable` (the consumer backs off and tries
again), which keeps per-key order across a reconnect. The IO thread ends when the broker
answers the close, or when pika gives the connection up for missed heartbeats (after one
to two heartbeat timeouts: 65 to 130 s by default; with ``heartbeat=0``, only when TCP
gives up, which can take a quarter of an hour). In that second case the broker may not
have noticed yet, and the order then holds only if it notices before the new subscription
receives anything.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from txmq.adapters.base import Subscription
from txmq.adapters.rabbitmq.connection import (
    channel_error,
    close_quietly,
    open_blocking,
    pika,
    unavailable,
)
from txmq.adapters.rabbitmq.settings import RabbitMQSettings
from txmq.adapters.rabbitmq.wire import decode_frame, settlement_plan
from txmq.errors import BrokerError, BrokerUnavailable, ConfigurationError
from txmq.wire import Delivery

log = logging.getLogger("txmq.rabbitmq")

#: Largest prefetch count AMQP can express (a 16-bit field; 0 would mean unlimited).
MAX_PREFETCH = 65535
#: Longest turn of the IO thread's event loop: how soon it sees a closed channel. Stop
#: requests, settlements and frames wake it at once.
_TURN = 0.5
#: Seconds allowed, on top of the connect timeout, for the IO thread to write a settlement
#: or to finish closing the connection.
_GRACE = 1.0

#: Longest time an ack waits to be written with the acks after it, while the caller still
#: has deliveries buffered. A delayed ack holds a prefetch slot a little longer and, if the
#: process dies meanwhile, means a redelivery that the inbox turns into a no-op.
ACK_INTERVAL = 0.01

_AMQP_ERRORS = (pika.exceptions.AMQPError, OSError)

#: A queue as the broker knows it: (nodes in any order, virtual host, queue name).
_QueueKey = tuple[frozenset[tuple[str, int]], str, str]

#: Subscriptions being closed, and those whose close() returned while their IO thread was
#: still closing the connection (see the module's docstring), guarded by _closing_lock.
#: Those whose thread has ended are dropped by the next subscription that opens.
_closing: set[RabbitMQSubscription] = set()
_closing_lock = threading.Lock()


class _Settlement:
    """Acks (or requeueing rejects) of some delivery tags, handed to the IO thread."""

    __slots__ = ("done", "error", "requeue", "tags")

    def __init__(self, tags: list[int], *, requeue: bool) -> None:
        self.tags = tags
        self.requeue = requeue
        self.done = threading.Event()
        self.error: BrokerUnavailable | None = None

    def finish(self, error: BrokerUnavailable | None = None) -> None:
        self.error = error
        self.done.set()


class RabbitMQSubscription(Subscription):
    """Consumes ``sources`` (queue names) with manual acks; see :class:`Subscription`.

    ``prefetch`` bounds the unacknowledged messages of each source queue (RabbitMQ applies
    ``basic.qos`` per consumer). Heartbeats are answered however long the caller takes
    between calls. :meth:`ack` hands the acks to the IO thread and returns; :meth:`release`
    returns once the broker's socket has taken the rejects. A lost connection makes
    :meth:`poll`, :meth:`ack` and :meth:`release` raise :class:`BrokerUnavailable` (the
    undelivered and unacked messages go back to their queues, acks not yet written
    included); the subscription does not reconnect.

    Raises (when opened):
        BrokerUnavailable: the broker cannot be reached, or an earlier subscription to one
            of the queues in this process is still closing its connection (waited for up
            to the connect timeout plus a second first).
        TopologyError: a source queue does not exist.
    """

    settles_at_once = True  # ack() hands the acks to the IO thread

    def __init__(
        self, settings: RabbitMQSettings, group: str, sources: Sequence[str], *, prefetch: int
    ) -> None:
        if not 0 < prefetch <= MAX_PREFETCH:
            raise ConfigurationError(f"prefetch must be between 1 and {MAX_PREFETCH}")
        self._settings = settings
        self._prefetch = prefetch
        self._closed = False  # the caller's thread only
        # Shared between the caller's thread and the IO thread, guarded by _lock.
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._buffer: deque[Delivery] = deque()
        self._cancelled: list[str] = []  # queues whose consumer the broker cancelled
        self._lost: BrokerUnavailable | None = None  # why the IO thread stopped
        self._pending: deque[_Settlement] = deque()  # handed over, not yet taken up, in order
        self._wake_queued = False  # a _take_up call, or a timer, will write what is pending
        self._stopping = threading.Event()
        # The IO thread's own, once it runs. Delivery tags received and not settled yet,
        # oldest first (a dict keeps order).
        self._outstanding: dict[int, None] = {}
        self._sources: dict[str, str] = {}  # consumer tag -> queue
        self._next_write = 0.0  # time.monotonic() from which acks are written at once
        self._write_later = False  # a timer will write what is pending
        self._queues = {_queue_key(settings, source) for source in sources}
        _wait_for_earlier(settings, self._queues)
        self._connection = open_blocking(settings, name=f"txmq consumer {group}")
        source = ""
        try:
            self._channel = self._connection.channel()
            self._channel.basic_qos(prefetch_count=prefetch)
            self._channel.add_on_cancel_callback(self._on_cancel)
            for source in sources:
                tag = self._channel.basic_consume(
                    source, functools.partial(self._on_message, source), auto_ack=False
                )
                self._sources[tag] = source
        except _AMQP_ERRORS as exc:
            close_quietly(self._connection)
            raise channel_error(settings, exc, f"consuming from queue {source!r}") from exc
        # From here on only the IO thread touches the connection and the channel.
        self._thread = threading.Thread(
            target=self._run, name=f"txmq consumer {group} io", daemon=True
        )
        self._thread.start()

    # --- caller's thread -------------------------------------------------------------

    def poll(self, timeout: float, max_messages: int = 100) -> list[Delivery]:
        self._check_open()
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not (self._buffer or self._cancelled or self._lost):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.wait(remaining)
            if self._lost is not None:
                # What is buffered can no longer be acknowledged: it is redelivered.
                raise _again(self._lost)
            if self._cancelled and not self._buffer:
                # Without this the subscription would just go quiet.
                raise BrokerUnavailable(
                    f"RabbitMQ at {self._settings.redacted_url()} cancelled consuming from "
                    f"{', '.join(map(repr, self._cancelled))} (queue deleted or moved?)"
                )
            count = min(max_messages, len(self._buffer))
            return [self._buffer.popleft() for _ in range(count)]

    def ack(self, deliveries: Iterable[Delivery]) -> None:
        """Acknowledge ``deliveries`` (see :class:`Subscription`): hands the acks to the IO
        thread and returns without waiting for them to be written. If the connection is
        lost before they are, the messages are redelivered; acks handed over before
        :meth:`close` are written before the connection closes.

        Raises:
            BrokerUnavailable: the connection is already lost.
            BrokerError: the subscription is closed.
        """
        self._hand_over(deliveries, requeue=False)

    def release(self, deliveries: Iterable[Delivery]) -> None:
        """Give ``deliveries`` back to their queues; returns once the rejects are written.

        Raises:
            BrokerUnavailable: the connection is lost (the messages go back anyway).
            BrokerError: the subscription is closed.
        """
        settlement = self._hand_over(deliveries, requeue=True)
        if settlement is None:
            return
        bound = self._settings.common.connect_timeout + _GRACE
        if not settlement.done.wait(bound):
            raise BrokerUnavailable(
                f"RabbitMQ at {self._settings.redacted_url()}: releasing "
                f"{len(settlement.tags)} message(s) was not written within {bound:g} s"
            )
        if settlement.error is not None:
            raise _again(settlement.error)

    def close(self) -> None:
        """Stop the IO thread, which closes the connection: unsettled messages, buffered
        ones included, go back to their queues. Waits for it at most the connect timeout
        (plus a second); if it is still closing then, it finishes by itself, and new
        subscriptions to its queues wait for it (see the module's docstring). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._wake()
        bound = self._settings.common.connect_timeout + _GRACE
        with _closing_lock:  # from now: a subscription opened meanwhile waits for this one
            _closing.add(self)
        self._thread.join(bound)
        if not self._thread.is_alive():
            with _closing_lock:
                _closing.discard(self)  # or dropped already, by a subscription opening
        else:
            log.warning(
                "the IO thread of a RabbitMQ subscription to %s did not stop within %g s; "
                "it finishes closing by itself, and until it has, the broker holds its "
                "unacknowledged messages and this process opens no subscription to %s",
                self._settings.redacted_url(),
                bound,
                ", ".join(sorted(repr(queue) for _, _, queue in self._queues)),
            )
        with self._lock:
            self._buffer.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError("the subscription is closed")

    def _hand_over(self, deliveries: Iterable[Delivery], *, requeue: bool) -> _Settlement | None:
        """Queue the settlement of ``deliveries`` for the IO thread (None: nothing to settle).

        An ack joins the ack queued before it if the IO thread has not taken that up yet,
        and only the first settlement queued since the IO thread last took them up wakes it.
        """
        self._check_open()
        tags = [d.token for d in deliveries]
        if not tags:
            return None
        with self._lock:
            if self._lost is not None:
                raise _again(self._lost)
            last = self._pending[-1] if self._pending else None
            if not requeue and last is not None and not last.requeue:
                last.tags.extend(tags)
                settlement = last
            else:
                settlement = _Settlement(tags, requeue=requeue)
                self._pending.append(settlement)
            # A release is written at once, even while a timer holds the acks before it.
            wake = requeue or not self._wake_queued
            self._wake_queued = True
        if wake:
            # Closed under us: the IO thread fails what is pending as it stops.
            with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
                self._connection.add_callback_threadsafe(self._take_up)
        return settlement

    def _wake(self) -> None:
        """Have the IO thread's event loop return now."""
        with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
            self._connection.add_callback_threadsafe(_nothing)

    # --- IO thread ---------------------------------------------------------------------

    def _run(self) -> None:
        reason: BrokerUnavailable | None = None
        try:
            while not self._stopping.is_set():
                self._connection.process_data_events(time_limit=_TURN)
                if self._channel.is_closed:
                    reason = BrokerUnavailable(
                        f"RabbitMQ at {self._settings.redacted_url()} closed the consumer channel"
                    )
                    break
            if reason is None:
                self._apply_pending()  # handed over before close(): written before it closes
        except _AMQP_ERRORS as exc:
            reason = unavailable(self._settings, exc, "consuming")
            reason.__cause__ = exc
        except Exception as exc:  # a bug must not leave poll() waiting forever
            log.exception("the IO thread of a RabbitMQ subscription failed")
            reason = BrokerUnavailable(f"the RabbitMQ subscription's IO thread failed: {exc!r}")
            reason.__cause__ = exc
        finally:
            if reason is None:
                reason = BrokerUnavailable("the subscription is closed")
            self._lose(reason)
            close_quietly(self._connection)

    def _lose(self, reason: BrokerUnavailable) -> None:
        """Fail what is pending, and every later call, with ``reason``."""
        with self._arrived:
            self._lost = reason
            pending, self._pending = self._pending, deque()
            self._arrived.notify_all()
        for settlement in pending:
            settlement.finish(reason)

    def _on_cancel(self, frame: Any) -> None:
        with self._arrived:
            self._cancelled.append(self._sources.get(frame.method.consumer_tag, "?"))
            self._arrived.notify_all()

    def _on_message(
        self, source: str, _channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        tag = method.delivery_tag
        self._outstanding[tag] = None
        delivery = decode_frame(source, tag, method, properties, body)
        with self._arrived:
            self._buffer.append(delivery)
            self._arrived.notify()

    def _take_up(self) -> None:
        """Write what is pending now, or at the end of the ack interval (see the module's
        docstring) if the caller still has deliveries buffered."""
        with self._lock:
            urgent = (
                not self._buffer
                or any(settlement.requeue for settlement in self._pending)
                or sum(len(settlement.tags) for settlement in self._pending) * 2 >= self._prefetch
            )
        wait = self._next_write - time.monotonic()
        if urgent or wait <= 0:
            self._apply_pending()
        elif not self._write_later:
            self._write_later = True
            self._connection.call_later(wait, self._apply_pending)

    def _apply_pending(self) -> None:
        """Write every settlement handed over so far, in order."""
        self._write_later = False
        self._next_write = time.monotonic() + ACK_INTERVAL
        with self._lock:
            batch, self._pending = self._pending, deque()
            self._wake_queued = False
        while batch:
            settlement = batch.popleft()
            try:
                self._apply(settlement)
            except _AMQP_ERRORS:
                for rest in batch:  # no longer pending: _lose would not fail them
                    rest.finish(settlement.error)
                raise

    def _apply(self, settlement: _Settlement) -> None:
        outstanding = self._outstanding
        # A tag settled twice (or not ours) would make the broker close the channel.
        tags = {tag for tag in settlement.tags if tag in outstanding}
        channel = self._channel
        try:
            for tag, multiple in settlement_plan(outstanding, tags):
                if settlement.requeue:
                    channel.basic_nack(delivery_tag=tag, multiple=multiple, requeue=True)
                else:
                    channel.basic_ack(delivery_tag=tag, multiple=multiple)
        except _AMQP_ERRORS as exc:
            doing = "releasing" if settlement.requeue else "acknowledging"
            error = unavailable(self._settings, exc, doing)
            error.__cause__ = exc
            settlement.finish(error)
            raise  # the connection or channel is gone: the IO loop ends
        for tag in tags:
            del outstanding[tag]
        settlement.finish()


def _queue_key(settings: RabbitMQSettings, queue: str) -> _QueueKey:
    return (frozenset(settings.nodes), settings.virtual_host, queue)


def _wait_for_earlier(settings: RabbitMQSettings, queues: set[_QueueKey]) -> None:
    """Wait (up to the connect timeout plus a second) for the subscriptions to any of
    ``queues`` that are still closing.

    Raises:
        BrokerUnavailable: one is still closing then.
    """
    with _closing_lock:
        _closing.difference_update([e for e in _closing if not e._thread.is_alive()])
        waits = [earlier for earlier in _closing if earlier._queues & queues]
    if not waits:
        return
    bound = settings.common.connect_timeout + _GRACE
    deadline = time.monotonic() + bound
    for earlier in waits:
        earlier._thread.join(max(0.0, deadline - time.monotonic()))
        if earlier._thread.is_alive():
            shared = sorted(repr(queue) for _, _, queue in earlier._queues & queues)
            raise BrokerUnavailable(
                f"RabbitMQ at {settings.redacted_url()}: an earlier subscription to "
                f"{', '.join(shared)} in this process is still closing its connection "
                f"(waited {bound:g} s); the broker redelivers its unacknowledged messages "
                "only once it has, and consuming before that would deliver later messages "
                "first"
            )


def _nothing() -> None:
    """A callback that only wakes the IO thread's event loop."""


def _again(error: BrokerUnavailable) -> BrokerUnavailable:
    """A fresh copy of ``error`` to raise in the caller's thread (one exception object
    raised repeatedly would pile up tracebacks)."""
    copy = BrokerUnavailable(str(error))
    copy.__cause__ = error.__cause__
    return copy
