"""The small protocol every broker adapter implements.

An adapter maps txmq's vocabulary (topics, groups, retry stages, dead-letter queues) onto one
broker. Everything above this module (producer, relay, consumer) talks to brokers only
through these classes, which is what lets an application switch brokers by URL.

Threading: an :class:`Adapter` holds settings and is safe to share. Each
:class:`Publisher` and :class:`Subscription` owns its own connection and must be used from
one thread at a time (the pika discipline: one connection per thread).

Physical names of queues and topics are in :mod:`txmq.adapters.names`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from txmq.adapters.names import dead_letter_queue, retry_queue, work_queue
from txmq.lifecycle import Closing
from txmq.message import Message, validate_name
from txmq.wire import Delivery

if TYPE_CHECKING:
    from txmq.config import BrokerSettings


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
    ``acks=all``; with a ``transactional_id`` each batch is one Kafka transaction, so either
    every outcome is ok or none is.
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

        On Kafka with a ``transactional_id`` this runs ``init_transactions``, which fences
        an older producer with the same id.

        Raises:
            BrokerUnavailable: the broker cannot be reached.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection. Idempotent."""


class Subscription(Closing):
    """A consumer group's manual-ack stream over one or more queues/topics.

    Messages are acknowledged only by :meth:`ack`; a message not acked before the
    subscription's connection dies is redelivered (to this group).
    """

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
        """Stop fetching from ``sources`` until :meth:`resume` (Kafka retry topics)."""

    def resume(self, sources: Iterable[str]) -> None:
        """Fetch from ``sources`` again."""


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

    #: OpenTelemetry ``messaging.system`` value: ``"rabbitmq"`` or ``"kafka"``.
    system: str
    #: Whether the subscriptions of one group compete for the messages of a queue, each
    #: holding up to its prefetch (RabbitMQ), rather than each owning partitions (Kafka).
    #: What one subscription holds, no other can run meanwhile.
    competing_consumers: bool = False

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
    def publisher(self, *, transactional_id: str | None = None) -> Publisher:
        """Open a publisher; with ``transactional_id`` (Kafka), batches are transactions."""

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
