"""The small protocol every broker adapter implements.

An adapter maps txmq's vocabulary (topics, groups, retry stages, dead-letter queues) onto one
broker. Everything above this module (producer, relay, consumer) talks to brokers only
through these classes, which is what lets an application switch brokers by URL.

Threading: an :class:`Adapter` holds settings and is safe to share. Each
:class:`Publisher` and :class:`Subscription` owns its own connection and must be used from
one thread at a time (the pika discipline: one connection per thread).

What differs between brokers is stated, not asked: each adapter declares its
:class:`Capabilities` (native transactions, how retry delays are kept, where DLQ replays
go, whether consumers compete for a queue), offers its broker's transactions through
:meth:`Adapter.transaction`, and its subscriptions keep delivery details (withholding a
retry that is not due yet, dropping another group's replay) to themselves. No code above
this package compares broker names.

Physical names of queues and topics are in :mod:`txmq.adapters.names`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from txmq.adapters.names import dead_letter_queue, retry_queue, work_queue
from txmq.errors import ConfigurationError
from txmq.lifecycle import Closing
from txmq.message import Message, validate_name
from txmq.wire import Delivery

if TYPE_CHECKING:
    from txmq.config import BrokerSettings


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a broker does itself, so that the layers above ask the adapter, not its name.

    Attributes:
        native_transactions: the broker publishes several messages atomically under a
            producer identity that fences older instances of it (Kafka transactions).
            :meth:`Adapter.transaction` then gives a :class:`Transaction`, the producer
            produces half messages inside one while the local transaction runs
            (``Producer(kafka_native=True)``), and each relay batch is one transaction.
            Without it, every message is confirmed on its own (RabbitMQ confirms).
        retry_delays: how a retry stage's delay is kept. ``"queue_ttl"``: the broker
            holds the message in the retry queue for the stage's delay, then moves it back
            into the work queue (RabbitMQ's TTL and dead-lettering); retry queues are not
            consumed. ``"due_time"``: retry queues are consumed like any source, and the
            subscription withholds a message until its ``x-txmq-due-at`` (Kafka's retry
            topics; see :mod:`txmq.adapters.due_time`).
        replays_to: where a DLQ replay is sent (:meth:`Adapter.replay_destination`).
            ``"work_queue"``: the group's own work queue, read by that group only.
            ``"topic"``: the logical topic, which every group reads; the replay names its
            group in ``x-txmq-target-group`` and the other groups' subscriptions
            acknowledge it unseen (Kafka, where a group reads the topic itself).
        competing_consumers: the subscriptions of one group compete for the messages of a
            queue, each holding up to its prefetch (RabbitMQ), rather than each owning
            partitions (Kafka). What one subscription holds, no other can run meanwhile.
    """

    native_transactions: bool = False
    retry_delays: Literal["queue_ttl", "due_time"] = "queue_ttl"
    replays_to: Literal["work_queue", "topic"] = "work_queue"
    competing_consumers: bool = False


def validate_identity(identity: object) -> str:
    """Return a publisher's ``identity`` (see :meth:`Adapter.publisher`) if it is usable.

    Raises:
        ConfigurationError: it is not a non-empty str.
    """
    if not isinstance(identity, str) or not identity:
        raise ConfigurationError(f"a publisher's identity must be a non-empty str: {identity!r}")
    return identity


@dataclass(frozen=True, slots=True)
class Topology:
    """What a consumer group needs to exist for one topic.

    Attributes:
        group: the consumer group.
        topic: the logical topic.
        retry_delays: delay in seconds of each retry stage; stage ``n`` waits
            ``retry_delays[n-1]``. Empty: no retry stages.
    """

    group: str
    topic: str
    retry_delays: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        validate_name(self.group, "group")
        validate_name(self.topic, "topic")
        if any(d <= 0 for d in self.retry_delays):
            raise ValueError("retry delays must be positive")

    @property
    def work_queue(self) -> str:
        return work_queue(self.group, self.topic)

    @property
    def dead_letter_queue(self) -> str:
        return dead_letter_queue(self.group, self.topic)

    def retry_queues(self) -> list[str]:
        return [
            retry_queue(self.group, self.topic, n) for n in range(1, len(self.retry_delays) + 1)
        ]


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    """What the broker said about one published message.

    ``error`` is ``None`` when the broker confirmed the message (persisted, routed);
    otherwise it is the :class:`~txmq.errors.PublishError` (or subclass) describing why not.
    """

    message_id: str
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Publisher(Closing):
    """Publishes batches and reports, per message, whether the broker confirmed it.

    RabbitMQ: persistent messages, publisher confirms pipelined across the batch, unroutable
    (``mandatory`` returned) messages reported as failures. Kafka: idempotent producer with
    ``acks=all``; opened with an ``identity`` (see :meth:`Adapter.publisher`) each batch is
    one Kafka transaction, so either every outcome is ok or none is.
    """

    @abc.abstractmethod
    def publish(
        self, messages: Sequence[Message], *, timeout: float | None = None
    ) -> list[PublishOutcome]:
        """Publish ``messages`` to their topics; return one outcome per message, same order.

        Raises:
            BrokerUnavailable: the connection is lost (outcomes are then unknown).
        """

    @abc.abstractmethod
    def send_to_queue(
        self, queue: str, messages: Sequence[Message], *, timeout: float | None = None
    ) -> list[PublishOutcome]:
        """Publish straight into a physical queue/topic (retry stage, DLQ, replay)."""

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection now rather than at the first publish (no-op when open).

        Where batches are transactions (an ``identity`` on a broker with native
        transactions) this also initialises them, which fences an older publisher of the
        same identity (Kafka's ``init_transactions``).

        Raises:
            BrokerUnavailable: the broker cannot be reached.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection. Idempotent."""


class Transaction(Closing):
    """One broker transaction of a producer, opened and settled by hand (half messages).

    Messages produced inside an open transaction are invisible to consumers until
    :meth:`commit`, and never seen if it is aborted. One transaction is open at a time;
    after commit or abort the same object opens the next one. Get it from
    :meth:`Adapter.transaction` (only where :attr:`Capabilities.native_transactions`).
    """

    @abc.abstractmethod
    def begin(self) -> None:
        """Open a transaction.

        Raises:
            PublishError: a transaction is already open, or the producer failed.
            BrokerUnavailable: transactions could not be initialised in time.
        """

    @abc.abstractmethod
    def produce(self, messages: Sequence[Message]) -> None:
        """Produce ``messages`` inside the open transaction (invisible until commit).

        Raises:
            MessageTooLarge: a message is too large; nothing was produced.
            PublishError: no transaction is open, or producing failed (then aborted).
        """

    @abc.abstractmethod
    def commit(self, timeout: float | None = None) -> None:
        """Commit the open transaction: its messages become visible, all together.

        Raises:
            PublishError: the transaction was NOT committed.
            BrokerUnavailable: the outcome is UNKNOWN (it may or may not be committed).
        """

    @abc.abstractmethod
    def abort(self, timeout: float | None = None) -> None:
        """Abort the open transaction, if any: its messages are never seen.

        Raises:
            BrokerUnavailable: the broker did not confirm the abort in time (the messages
                stay invisible all the same).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Abort an open transaction and release the connection. Idempotent."""


@dataclass(frozen=True, slots=True)
class Withheld:
    """Deliveries a subscription kept from its caller (see :meth:`Subscription.withheld`).

    Attributes:
        held: given back to the broker because they are not due yet (a retry read before
            its delay has passed: ``"due_time"`` retry delays).
        skipped: addressed to another group (a DLQ replay sent to the shared topic:
            ``"topic"`` replays), acknowledged without being handed out.
    """

    held: int = 0
    skipped: int = 0


class Subscription(Closing):
    """A consumer group's manual-ack stream over one or more queues/topics.

    Messages are acknowledged only by :meth:`ack`; a message not acked before the
    subscription's connection dies is redelivered (to this group). What is not the
    caller's to handle never comes out of :meth:`poll`: a retry that is not due yet, a
    replay for another group (see :class:`Capabilities`); :meth:`withheld` counts them.
    """

    #: True if :meth:`ack` and :meth:`withheld` never wait for the network (an ack is handed
    #: to an IO thread or sent asynchronously): the asyncio consumer then calls them on the
    #: event loop instead of sending each to a thread.
    settles_at_once: ClassVar[bool] = False

    @abc.abstractmethod
    def poll(self, timeout: float, max_messages: int = 100) -> list[Delivery]:
        """Return up to ``max_messages`` deliveries, waiting up to ``timeout`` s for the first."""

    @abc.abstractmethod
    def ack(self, deliveries: Iterable[Delivery]) -> None:
        """Settle deliveries as done.

        RabbitMQ acks them (one multiple-ack where contiguous); Kafka marks their offsets
        done and commits the highest contiguous done offset per partition.
        """

    @abc.abstractmethod
    def release(self, deliveries: Iterable[Delivery]) -> None:
        """Give deliveries back unprocessed, to be delivered again (requeue / seek back)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop consuming; unacked deliveries will be redelivered. Idempotent."""

    def pause(self, sources: Iterable[str]) -> None:
        """Stop fetching from ``sources`` until :meth:`resume` (retry topics not due yet)."""

    def resume(self, sources: Iterable[str]) -> None:
        """Fetch from ``sources`` again."""

    def withheld(self) -> Withheld:
        """How many deliveries :meth:`poll` kept back since the last call (then reset to 0).

        A subscription that hands out everything it reads keeps nothing back: the default.
        """
        return Withheld()


class QueueBrowser(Closing):
    """Reads a queue for administration (a DLQ): what is read stays unless removed.

    RabbitMQ: read messages are held unacknowledged by the browser and go back to their
    places when it closes; :meth:`remove` acknowledges them. Kafka: the topic is read to
    its end; :meth:`remove` appends a marker record to the removed record's partition,
    after which it is no longer read (unless the browser includes settled records), and
    purge or retention deletes marker and record together.
    """

    @abc.abstractmethod
    def read(self, *, limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` messages from the head of the queue, oldest first. Call once.

        Raises:
            BrokerUnavailable: the broker cannot be reached, or (Kafka) the topic could
                not be read to its end within ``timeout``.
        """

    @abc.abstractmethod
    def remove(self, deliveries: Iterable[Delivery]) -> None:
        """Take read ``deliveries`` out of the queue for good (listed no more).

        Raises:
            BrokerError: the broker did not confirm the removal (the messages stay).
        """


class Adapter(abc.ABC):
    """One broker, as txmq uses it. Build it with :func:`txmq.connect`."""

    #: OpenTelemetry ``messaging.system`` value: ``"rabbitmq"``, ``"kafka"``, ``"memory"``.
    #: A label for telemetry and logs; nothing decides by it.
    system: str
    #: What this broker does itself (see :class:`Capabilities`).
    capabilities: Capabilities = Capabilities()

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings

    @property
    def max_body_bytes(self) -> int:
        """Largest message (body + headers) txmq publishes here (``max_body_bytes`` option)."""
        return self.settings.common.max_body_bytes

    def publish_limit(self) -> int:
        """The largest message (body + headers) txmq publishes here: ``max_body_bytes``,
        lowered to what the broker itself accepts where the broker can say.

        An adapter that can learn the broker's limit asks once (one round trip, bounded by
        the connect timeout) and answers from memory afterwards; while the broker cannot be
        asked it answers ``max_body_bytes`` and asks again later. Never raises.
        """
        return self.max_body_bytes

    @abc.abstractmethod
    def ping(self) -> None:
        """Connect once and disconnect, within the connect timeout.

        Raises:
            BrokerUnavailable: the broker cannot be reached (the URL in the message is redacted).
        """

    @abc.abstractmethod
    def declare(self, topologies: Iterable[Topology]) -> None:
        """Create (idempotently) the queues/topics of each topology.

        Raises:
            TopologyError: an existing object conflicts with what is asked.
            BrokerUnavailable: the broker cannot be reached.
        """

    @abc.abstractmethod
    def publisher(self, *, identity: str | None = None) -> Publisher:
        """Open a publisher.

        Args:
            identity: a name of this publisher that stays the same across restarts and
                is unique among live publishers (e.g. ``relay-<instance>-<lane>``). With
                :attr:`Capabilities.native_transactions` each batch is then one broker
                transaction under that identity, and a restarted publisher fences the
                one it replaces (Kafka: ``transactional.id = txmq-<identity>``).
                Elsewhere it changes nothing.

        Raises:
            ConfigurationError: ``identity`` is empty.
        """

    def transaction(self, identity: str) -> Transaction | None:
        """A transaction to produce half messages in, or ``None`` where the broker has no
        native transactions (the default).

        Args:
            identity: as for :meth:`publisher`: stable across restarts of its owner
                (e.g. ``<producer group>-<instance>-<n>``) so that a restarted producer
                fences its predecessor's open transaction.

        Raises:
            ConfigurationError: ``identity`` is empty.
        """
        return None

    def replay_destination(self, group: str, topic: str) -> str:
        """The physical queue/topic a DLQ replay of ``group``'s ``topic`` is sent to: the
        group's work queue, or the topic itself (:attr:`Capabilities.replays_to`)."""
        if self.capabilities.replays_to == "work_queue":
            return work_queue(group, topic)
        return topic

    @abc.abstractmethod
    def subscribe(self, group: str, sources: Sequence[str], *, prefetch: int = 100) -> Subscription:
        """Open a manual-ack subscription of ``group`` over physical ``sources``.

        ``sources`` are physical names: on RabbitMQ queue names (``work_queue(...)``,
        retry queues are not consumed: their TTL dead-letters back into the work queue); on
        Kafka topic names (the topic itself, ``retry_queue(...)`` topics, a DLQ topic).
        Use :meth:`sources_for` to get them for a list of topologies.
        """

    @abc.abstractmethod
    def sources_for(self, topologies: Iterable[Topology]) -> list[str]:
        """The physical names a consumer of these topologies reads from."""

    @abc.abstractmethod
    def browse(self, queue: str, *, include_settled: bool = False) -> QueueBrowser:
        """Open ``queue`` (a dead-letter queue, or any queue/topic) for inspection.

        Args:
            queue: the physical queue (RabbitMQ) or topic (Kafka).
            include_settled: Kafka: also read records already settled with
                :meth:`QueueBrowser.remove` (the log keeps them until purge or retention).
                RabbitMQ: no effect (a removed message has left the queue).

        Raises:
            QueueNotFound: ``queue`` does not exist.
            BrokerUnavailable: the broker cannot be reached.
        """

    def read_queue(self, queue: str, *, limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` messages of ``queue``, oldest first; they stay where they are.

        Raises:
            QueueNotFound: ``queue`` does not exist.
            BrokerUnavailable: the broker cannot be reached.
        """
        with self.browse(queue) as browser:
            return browser.read(limit=limit, timeout=timeout)

    @abc.abstractmethod
    def purge_queue(self, queue: str) -> int:
        """Delete every message in ``queue``; return how many of them were still listed.

        Raises:
            QueueNotFound: ``queue`` does not exist.
            BrokerUnavailable: the broker cannot be reached.
        """

    def queue_depth(self, queue: str) -> int | None:
        """How many messages wait in ``queue`` (a dead-letter queue, mostly): 0 when it does
        not exist, None when this broker cannot tell (the default).

        Raises:
            BrokerUnavailable: the broker cannot be reached.
        """
        return None

    def consumer_lag(self, group: str, topic: str) -> int | None:
        """How many messages of ``topic`` consumer group ``group`` has yet to take: 0 when
        nothing of it exists yet, None when this broker cannot tell (the default).

        Raises:
            BrokerUnavailable: the broker cannot be reached.
        """
        return None

    @property
    def unroutable_queue(self) -> str | None:
        """The physical queue holding messages published while no queue was bound for their
        topic, or ``None`` where the broker keeps them with the topic itself (Kafka)."""
        return None

    def reroute_unroutable(self, topics: Iterable[str] | None = None) -> int:
        """Publish the held messages of ``topics`` (all with ``None``) to their topics again,
        now that queues may be bound for them; return how many. Nothing is held on a broker
        without :attr:`unroutable_queue`: 0."""
        return 0

    def close(self) -> None:  # noqa: B027 - adapters without shared resources need nothing
        """Release shared resources (admin clients). Idempotent."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings.redacted_url()!r})"
