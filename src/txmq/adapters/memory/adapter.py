"""The ``memory://`` adapter: a broker in a dict, behind the adapter protocol, for fast tests.

:class:`InMemoryBroker` keeps the semantics the consumer depends on: queues per
``(group, topic)``, manual ack, redelivery of unacked messages when a subscription closes,
release (requeue at the front), a dead-letter queue, and retry stages kept in one of the
two ways of :attr:`~txmq.adapters.base.Capabilities.retry_delays`:

* ``retry_mode="ttl"`` (like RabbitMQ, ``"queue_ttl"``): retry queues are not consumed; a
  message becomes visible in the work queue again when its stage delay has passed;
* ``retry_mode="consume"`` (like Kafka's retry topics, ``"due_time"``): retry queues are
  consumed directly, and the subscription withholds a message until its
  ``x-txmq-due-at`` (:class:`~txmq.adapters.due_time.DueTimeGate`, as on Kafka).

Either way a DLQ replay goes into the group's own work queue, and there are no native
transactions.

A message for a topic no queue is bound for is held, as the real brokers do, in
:data:`UNROUTABLE`, and routed when a queue for its topic is declared;
``unroutable="return"`` makes such a publish fail instead (RabbitMQ's ``?unroutable=return``).

Everything is thread-safe; there is no persistence.

``txmq.connect("memory://name")`` (or ``--broker memory://name``) gives the broker of that
name, created at its first use and shared by every connection to it in the process, so that a
producer, a relay and a consumer built from the same URL see the same queues. Options:
``retry_mode=ttl|consume``, ``unroutable=hold|return`` and ``max_body_bytes``; they are fixed
when the broker is created. :func:`forget_memory_broker` drops a named broker.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from txmq.adapters.base import (
    Adapter,
    Capabilities,
    Publisher,
    PublishOutcome,
    QueueBrowser,
    Subscription,
    Topology,
    Withheld,
    validate_identity,
)
from txmq.adapters.due_time import DueTimeGate
from txmq.adapters.memory.settings import MemorySettings
from txmq.adapters.names import work_queue
from txmq.config import BrokerSettings, CommonSettings
from txmq.errors import (
    BrokerUnavailable,
    ConfigurationError,
    PublishError,
    QueueNotFound,
)
from txmq.message import DEFAULT_MAX_BODY_BYTES, Message
from txmq.wire import Delivery, decode_or_raw, message_from_wire

#: The queue holding messages published while no queue was bound for their topic.
UNROUTABLE = "memory.unroutable"


@dataclass(slots=True)
class _Entry:
    message: Message | None
    raw_body: bytes = b""
    raw_headers: dict[str, str] = field(default_factory=dict)
    redelivered: bool = False
    visible_at: float = 0.0


class InMemoryBroker(Adapter):
    """A broker in a dict. ``InMemoryBroker()`` keeps retry delays like RabbitMQ,
    ``retry_mode="consume"`` like Kafka's retry topics (see :attr:`capabilities`).

    Example:
        >>> broker = InMemoryBroker()
        >>> broker.declare([Topology("g", "t")])
        >>> with broker.publisher() as p:
        ...     p.publish([Message("t", b"x")])[0].ok
        True
    """

    system = "memory"
    settings: MemorySettings

    def __init__(
        self,
        *,
        retry_mode: Literal["ttl", "consume"] = "ttl",
        unroutable: Literal["hold", "return"] = "hold",
        name: str = "",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        super().__init__(
            MemorySettings(
                name=name,
                retry_mode=retry_mode,
                unroutable=unroutable,
                common=CommonSettings(max_body_bytes=max_body_bytes),
            )
        )
        self.retry_mode = retry_mode
        self.unroutable = unroutable
        self.capabilities = Capabilities(
            retry_delays="queue_ttl" if retry_mode == "ttl" else "due_time",
            competing_consumers=True,
        )
        self._cond = threading.Condition()
        self._queues: dict[str, deque[_Entry]] = {UNROUTABLE: deque()}
        self._bindings: dict[str, set[str]] = {}
        self._retry_targets: dict[str, tuple[float, str]] = {}
        self._topologies: dict[str, Topology] = {}
        self._tokens = itertools.count(1)
        self.acks = 0
        self.ack_calls = 0
        self.down = False

    def __repr__(self) -> str:
        return f"InMemoryBroker({self.settings.redacted_url()!r}, retry_mode={self.retry_mode!r})"

    # -- adapter protocol ---------------------------------------------------------------

    def ping(self) -> None:
        self._check_up()

    def declare(self, topologies: Iterable[Topology]) -> None:
        topologies = list(topologies)
        with self._cond:
            for topology in topologies:
                self._topologies[topology.work_queue] = topology
                self._queues.setdefault(topology.work_queue, deque())
                self._queues.setdefault(topology.dead_letter_queue, deque())
                self._bindings.setdefault(topology.topic, set()).add(topology.work_queue)
                for queue, delay in zip(
                    topology.retry_queues(), topology.retry_delays, strict=True
                ):
                    self._queues.setdefault(queue, deque())
                    self._retry_targets[queue] = (delay, topology.work_queue)
        self.reroute_unroutable({t.topic for t in topologies})

    @property
    def unroutable_queue(self) -> str | None:
        return UNROUTABLE if self.unroutable == "hold" else None

    def reroute_unroutable(self, topics: Iterable[str] | None = None) -> int:
        wanted = None if topics is None else set(topics)
        with self._cond:
            held = self._queues[UNROUTABLE]
            moved, kept = 0, deque[_Entry]()
            for entry in held:
                message = entry.message
                queues = self._bindings.get(message.topic, set()) if message else set()
                if message is None or not queues or (wanted and message.topic not in wanted):
                    kept.append(entry)
                    continue
                for queue in queues:
                    self._enqueue(queue, message)
                moved += 1
            self._queues[UNROUTABLE] = kept
            self._cond.notify_all()
        return moved

    def publisher(self, *, identity: str | None = None) -> Publisher:
        """A publisher; ``identity`` changes nothing (no native transactions).

        Raises:
            ConfigurationError: ``identity`` is empty.
            BrokerUnavailable: the broker is :attr:`down`.
        """
        if identity is not None:
            validate_identity(identity)
        self._check_up()
        return _Publisher(self)

    def subscribe(self, group: str, sources: Sequence[str], *, prefetch: int = 100) -> Subscription:
        self._check_up()
        with self._cond:
            missing = [s for s in sources if s not in self._queues]
        if missing:
            raise BrokerUnavailable(f"no such queue(s): {missing}")
        return _Subscription(self, group, list(sources), prefetch)

    def sources_for(self, topologies: Iterable[Topology]) -> list[str]:
        sources: list[str] = []
        for topology in topologies:
            sources.append(topology.work_queue)
            if self._retries_consumed:
                sources.extend(topology.retry_queues())
        return sources

    def browse(self, queue: str, *, include_settled: bool = False) -> QueueBrowser:
        """Like RabbitMQ: a removed message has left the queue (``include_settled`` ignored).

        Raises:
            QueueNotFound: ``queue`` was never declared.
        """
        with self._cond:
            if queue not in self._queues:
                raise QueueNotFound(f"no queue {queue!r}")
        return _Browser(self, queue)

    def purge_queue(self, queue: str) -> int:
        with self._cond:
            entries = self._queues.get(queue)
            if entries is None:
                raise QueueNotFound(f"no queue {queue!r}")
            count = len(entries)
            entries.clear()
            return count

    def queue_depth(self, queue: str) -> int:
        self._check_up()
        return self.depth(queue)

    def consumer_lag(self, group: str, topic: str) -> int:
        """The messages waiting in the group's work queue, as on RabbitMQ."""
        return self.queue_depth(work_queue(group, topic))

    # -- test helpers -------------------------------------------------------------------

    def messages(self, queue: str) -> list[Message]:
        """The decodable messages waiting in ``queue`` (not in flight), oldest first."""
        with self._cond:
            return [e.message for e in self._queues.get(queue, ()) if e.message is not None]

    def depth(self, queue: str) -> int:
        with self._cond:
            return len(self._queues.get(queue, ()))

    def inject_raw(self, queue: str, body: bytes, headers: dict[str, str]) -> None:
        """Put an undecodable message (no txmq id) into ``queue``."""
        with self._cond:
            self._queues[queue].append(_Entry(None, raw_body=body, raw_headers=dict(headers)))
            self._cond.notify_all()

    # -- internals ----------------------------------------------------------------------

    @property
    def _retries_consumed(self) -> bool:
        return self.capabilities.retry_delays == "due_time"

    def _check_up(self) -> None:
        if self.down:
            raise BrokerUnavailable("in-memory broker is down")

    def _delivery(self, queue: str, entry: _Entry, token: object) -> Delivery:
        if entry.message is None:
            return decode_or_raw(
                lambda: message_from_wire(
                    body=entry.raw_body, headers=entry.raw_headers, topic=queue
                ),
                source=queue,
                token=token,
                redelivered=entry.redelivered,
                raw_body=entry.raw_body,
                raw_headers=lambda: dict(entry.raw_headers),
            )
        return Delivery(entry.message, queue, entry.redelivered, token)

    def _enqueue(self, queue: str, message: Message) -> None:
        target = self._retry_targets.get(queue)
        visible_at = 0.0
        if target is not None and not self._retries_consumed:
            visible_at = time.monotonic() + target[0]
        self._queues[queue].append(_Entry(message, visible_at=visible_at))

    def _move_due_retries(self, now: float) -> float | None:
        """Queue TTL: move due retry entries to their work queue; return the next due time."""
        next_due: float | None = None
        if self._retries_consumed:
            return None
        for queue, (_delay, target) in self._retry_targets.items():
            entries = self._queues[queue]
            while entries and entries[0].visible_at <= now:
                self._queues[target].append(entries.popleft())
            if entries:
                due = entries[0].visible_at
                next_due = due if next_due is None else min(next_due, due)
        return next_due


_named_lock = threading.Lock()
_named: dict[str, InMemoryBroker] = {}


def memory_broker(settings: BrokerSettings) -> InMemoryBroker:
    """The process's broker named ``settings.name``, created at its first use
    (what ``txmq.connect("memory://name")`` returns).

    Raises:
        ConfigurationError: ``settings`` are not memory settings, or the broker of that name
            was created with other options.
    """
    if not isinstance(settings, MemorySettings):
        raise ConfigurationError(f"an in-memory broker needs memory:// settings, not {settings!r}")
    with _named_lock:
        broker = _named.get(settings.name)
        if broker is None:
            broker = _named[settings.name] = InMemoryBroker(
                retry_mode=settings.retry_mode,
                unroutable=settings.unroutable,
                name=settings.name,
                max_body_bytes=settings.common.max_body_bytes,
            )
        elif (broker.settings.retry_mode, broker.settings.unroutable, broker.max_body_bytes) != (
            settings.retry_mode,
            settings.unroutable,
            settings.common.max_body_bytes,
        ):
            raise ConfigurationError(
                f"{settings.redacted_url()} already exists with retry_mode="
                f"{broker.settings.retry_mode}, unroutable={broker.settings.unroutable}, "
                f"max_body_bytes={broker.max_body_bytes}"
            )
        return broker


def forget_memory_broker(name: str) -> None:
    """Drop the broker named ``name`` (its messages too); the next ``memory://name`` is new."""
    with _named_lock:
        _named.pop(name, None)


class _Browser(QueueBrowser):
    """Reads a snapshot of a queue; removes entries by identity."""

    def __init__(self, broker: InMemoryBroker, queue: str) -> None:
        self._broker = broker
        self._queue = queue
        self._read: dict[int, _Entry] = {}

    def read(self, *, limit: int, timeout: float) -> list[Delivery]:
        with self._broker._cond:
            entries = list(self._broker._queues[self._queue])[:limit]
        self._read = {id(entry): entry for entry in entries}
        return [self._broker._delivery(self._queue, e, token=id(e)) for e in entries]

    def remove(self, deliveries: Iterable[Delivery]) -> None:
        doomed = {id(self._read[d.token]) for d in deliveries if d.token in self._read}
        with self._broker._cond:
            queue = self._broker._queues[self._queue]
            kept = [entry for entry in queue if id(entry) not in doomed]
            queue.clear()
            queue.extend(kept)

    def close(self) -> None:
        self._read = {}


class _Publisher(Publisher):
    def __init__(self, broker: InMemoryBroker) -> None:
        self._broker = broker
        self._closed = False

    def publish(
        self, messages: Sequence[Message], *, timeout: float | None = None
    ) -> list[PublishOutcome]:
        broker = self._broker
        broker._check_up()
        outcomes = []
        with broker._cond:
            for message in messages:
                queues = broker._bindings.get(message.topic, set())
                for queue in queues:
                    broker._enqueue(queue, message)
                error = None
                if not queues and broker.unroutable == "hold":
                    broker._enqueue(UNROUTABLE, message)
                elif not queues:
                    error = PublishError(f"unroutable topic {message.topic!r}")
                outcomes.append(PublishOutcome(message.id, error))
            broker._cond.notify_all()
        return outcomes

    def send_to_queue(
        self, queue: str, messages: Sequence[Message], *, timeout: float | None = None
    ) -> list[PublishOutcome]:
        broker = self._broker
        broker._check_up()
        with broker._cond:
            if queue not in broker._queues:
                error = PublishError(f"no such queue {queue!r}")
                return [PublishOutcome(m.id, error) for m in messages]
            for message in messages:
                broker._enqueue(queue, message)
            broker._cond.notify_all()
        return [PublishOutcome(m.id) for m in messages]

    def connect(self) -> None:
        self._broker._check_up()

    def close(self) -> None:
        self._closed = True


class _Subscription(Subscription):
    def __init__(
        self, broker: InMemoryBroker, group: str, sources: list[str], prefetch: int
    ) -> None:
        self._broker = broker
        self._sources = sources
        self._prefetch = prefetch
        self._gate = DueTimeGate(group, sources if broker._retries_consumed else ())
        self._paused: set[str] = set()
        self._in_flight: dict[int, tuple[str, _Entry]] = {}
        self._closed = False

    def poll(self, timeout: float, max_messages: int = 100) -> list[Delivery]:
        broker = self._broker
        deadline = time.monotonic() + timeout
        with broker._cond:
            while True:
                broker._check_up()
                if self._closed:
                    raise BrokerUnavailable("subscription is closed")
                now = time.monotonic()
                next_due = broker._move_due_retries(now)
                wait = self._gate.open(self, deadline - now)
                room = min(max_messages, self._prefetch - len(self._in_flight))
                taken = self._take(room)
                deliveries = self._gate.admit(self, taken)
                if deliveries or now >= deadline:
                    return deliveries
                if taken:
                    continue  # all withheld: their sources are paused, the wait shortened
                if next_due is not None:
                    wait = min(wait, next_due - now)
                broker._cond.wait(max(wait, 0.001))

    def _take(self, room: int) -> list[Delivery]:
        taken: list[Delivery] = []
        for source in self._sources:
            if source in self._paused:
                continue
            entries = self._broker._queues[source]
            while entries and len(taken) < room:
                entry = entries.popleft()
                token = next(self._broker._tokens)
                self._in_flight[token] = (source, entry)
                taken.append(self._broker._delivery(source, entry, token))
        return taken

    def ack(self, deliveries: Iterable[Delivery]) -> None:
        broker = self._broker
        broker._check_up()
        with broker._cond:
            broker.ack_calls += 1
            for delivery in deliveries:
                if self._in_flight.pop(delivery.token, None) is not None:
                    broker.acks += 1

    def release(self, deliveries: Iterable[Delivery]) -> None:
        with self._broker._cond:
            self._requeue([d.token for d in deliveries])

    def _requeue(self, tokens: list[int]) -> None:
        for token in reversed(tokens):
            found = self._in_flight.pop(token, None)
            if found is not None:
                source, entry = found
                entry.redelivered = True
                self._broker._queues[source].appendleft(entry)
        self._broker._cond.notify_all()

    def withheld(self) -> Withheld:
        return Withheld(held=self._gate.take_held())

    def pause(self, sources: Iterable[str]) -> None:
        with self._broker._cond:
            self._paused.update(sources)

    def resume(self, sources: Iterable[str]) -> None:
        with self._broker._cond:
            self._paused.difference_update(sources)
            self._broker._cond.notify_all()

    def close(self) -> None:
        with self._broker._cond:
            if not self._closed:
                self._closed = True
                self._requeue(sorted(self._in_flight))
