"""RabbitMQ adapter (pika): topology, publisher, subscription and queue inspection.

Topology for group ``g`` and topic ``t`` (DESIGN.md section 5): one durable topic exchange
per deployment (``settings.exchange``); the durable work queue ``g.t`` bound to it with
routing key ``t``; retry queues ``g.t.retry.n`` whose per-queue TTL dead-letters messages
back into ``g.t`` through the default exchange; and the dead-letter queue ``g.t.dlq``.

Example:
    >>> broker = txmq.connect("rabbitmq://guest:guest@127.0.0.1:5672/")  # doctest: +SKIP
    >>> broker.declare([Topology("billing", "orders.created", retry_delays=(1, 10))])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from txmq.adapters.base import (
    Adapter,
    Capabilities,
    Publisher,
    Subscription,
    Topology,
    validate_identity,
)
from txmq.adapters.names import work_queue
from txmq.adapters.rabbitmq.browser import RabbitMQBrowser, missing_or_refused
from txmq.adapters.rabbitmq.connection import (
    channel_error,
    close_quietly,
    open_blocking,
    pika,
)
from txmq.adapters.rabbitmq.publisher import RabbitMQPublisher
from txmq.adapters.rabbitmq.settings import RabbitMQSettings
from txmq.adapters.rabbitmq.subscription import RabbitMQSubscription
from txmq.adapters.rabbitmq.unroutable import (
    declare_exchanges,
    exchange_hint,
    holding_queue_hint,
    move_into_queues,
    reroute,
    reroute_on,
    take_lock,
    unroutable_name,
)
from txmq.config import BrokerSettings
from txmq.errors import ConfigurationError, QueueNotFound
from txmq.message import validate_name

_AMQP_ERRORS = (pika.exceptions.AMQPError, OSError)


class RabbitMQAdapter(Adapter):
    """RabbitMQ as txmq uses it. Build it with :func:`txmq.connect`.

    Every publisher and subscription opens its own connection; the adapter itself holds
    none, and opens a short-lived one for each administrative call.
    """

    system = "rabbitmq"
    #: Confirms per message, no transactions; retry queues delay by TTL and dead-letter
    #: back into the work queue; each group has its own work queue, where replays go.
    capabilities = Capabilities(competing_consumers=True)
    settings: RabbitMQSettings

    def __init__(self, settings: BrokerSettings) -> None:
        if not isinstance(settings, RabbitMQSettings):
            raise ConfigurationError(f"RabbitMQAdapter needs RabbitMQSettings, not {settings!r}")
        super().__init__(settings)

    def ping(self) -> None:
        close_quietly(open_blocking(self.settings, name="txmq ping"))

    def declare(self, topologies: Iterable[Topology]) -> None:
        """Declare the exchange and each topology's queues; move the messages held for
        their topics into the new work queues; bind the work queues; then re-route what
        was held meanwhile (see :meth:`reroute_unroutable`). The first consumer group of a
        topic gets what was published before it existed, ahead of what is published while
        and after it declares: per-key order holds across held and live messages.

        Raises:
            TopologyError: an existing object conflicts (e.g. an exchange declared by an
                older txmq without the alternate exchange: the message says what to do).
            BrokerUnavailable: the broker cannot be reached.
        """
        topologies = list(topologies)
        holding = unroutable_name(self.settings)
        moves = bool(topologies) and self.settings.unroutable == "hold"
        connection = open_blocking(self.settings, name="txmq declare")
        exchange = f"declaring exchange {self.settings.exchange!r} ({exchange_hint(self.settings)})"
        doing = exchange
        try:
            if moves:
                doing = f"waiting for another declaration to finish moving {holding!r}"
                take_lock(connection, self.settings)
                doing = exchange
            channel = connection.channel()
            declare_exchanges(channel, self.settings)
            for topology in topologies:
                for queue, arguments in self._queues(topology):
                    doing = f"declaring queue {queue!r} with {arguments}"
                    channel.queue_declare(queue, durable=True, arguments=arguments)
            targets: dict[str, list[str]] = {}
            for topology in topologies:
                targets.setdefault(topology.topic, []).append(topology.work_queue)
            mover = connection.channel()
            mover.confirm_delivery()
            if moves:
                # Before any work queue is bound: no live message can reach it yet, so the
                # held ones go in first.
                doing = f"moving the messages held in {holding!r}"
                move_into_queues(mover, self.settings, targets)
            for topology in topologies:
                doing = f"binding queue {topology.work_queue!r} to topic {topology.topic!r}"
                channel.queue_bind(
                    topology.work_queue, self.settings.exchange, routing_key=topology.topic
                )
            if moves:
                # Held while the queues were being bound: behind the moved ones, but a live
                # message of the same key may already be ahead of them.
                doing = f"re-routing the messages held in {holding!r}"
                reroute_on(mover, self.settings, targets)
        except _AMQP_ERRORS as exc:
            if unroutable_name(self.settings) in str(exc) and "x-queue-type" in str(exc):
                doing = f"declaring the holding queue ({holding_queue_hint(self.settings)})"
            raise channel_error(self.settings, exc, doing) from exc
        finally:
            # A refused declaration closes its channel; the connection goes with it.
            close_quietly(connection)

    @property
    def unroutable_queue(self) -> str | None:
        """The queue holding messages no queue was bound for (``None``: ``unroutable=return``)."""
        return unroutable_name(self.settings) if self.settings.unroutable == "hold" else None

    def reroute_unroutable(self, topics: Iterable[str] | None = None) -> int:
        """Publish the held messages of ``topics`` (every topic with ``None``) again.

        Without ``topics`` the whole holding queue is looked at; for given topics (as
        :meth:`declare` does) the first 10,000 held messages.
        """
        if topics is None:
            return reroute(self.settings, None, scan_limit=None)
        return reroute(self.settings, set(topics))

    def _queues(self, topology: Topology) -> list[tuple[str, dict[str, Any]]]:
        """Every queue of ``topology`` with its declaration arguments."""
        queue_type: dict[str, Any] = {"x-queue-type": self.settings.queue_type}
        queues = [(topology.work_queue, queue_type)]
        for queue, delay in zip(topology.retry_queues(), topology.retry_delays, strict=True):
            retry = {
                **queue_type,
                "x-message-ttl": max(1, round(delay * 1000)),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": topology.work_queue,
            }
            if self.settings.queue_type == "quorum":
                # Quorum queues dead-letter at most once unless told otherwise; a retry must
                # not vanish between the retry queue and the work queue.
                retry |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
            queues.append((queue, retry))
        queues.append((topology.dead_letter_queue, queue_type))
        return queues

    def publisher(self, *, identity: str | None = None) -> Publisher:
        """A publisher with its own connection; ``identity`` changes nothing here (every
        message is confirmed on its own, there are no transactions to fence).

        Raises:
            ConfigurationError: ``identity`` is empty.
        """
        if identity is not None:
            validate_identity(identity)
        return RabbitMQPublisher(self.settings)

    def subscribe(self, group: str, sources: Sequence[str], *, prefetch: int = 100) -> Subscription:
        validate_name(group, "group")
        return RabbitMQSubscription(self.settings, group, sources, prefetch=prefetch)

    def sources_for(self, topologies: Iterable[Topology]) -> list[str]:
        return list(dict.fromkeys(t.work_queue for t in topologies))

    def browse(self, queue: str, *, include_settled: bool = False) -> RabbitMQBrowser:
        """Hold messages of ``queue`` for inspection (see :class:`RabbitMQBrowser`).

        ``include_settled`` has no effect: a removed message has left the queue. While
        held, the messages are not delivered to consumers of the queue; given back, they
        may be marked redelivered.
        """
        validate_name(queue, "queue")
        return RabbitMQBrowser(self.settings, queue)

    def purge_queue(self, queue: str) -> int:
        validate_name(queue, "queue")
        connection = open_blocking(self.settings, name="txmq purge")
        try:
            frame = connection.channel().queue_purge(queue)
        except _AMQP_ERRORS as exc:
            raise missing_or_refused(self.settings, exc, queue, f"purging queue {queue!r}") from exc
        finally:
            close_quietly(connection)
        return int(frame.method.message_count)

    def queue_depth(self, queue: str) -> int:
        """The messages ready in ``queue`` (RabbitMQ's ``message_count`` of a passive
        declare: those delivered and not yet acknowledged, e.g. held by a browser, are not
        counted); 0 when the queue does not exist.

        Raises:
            BrokerUnavailable: the broker cannot be reached.
            BrokerError: the broker refused to tell.
        """
        validate_name(queue, "queue")
        connection = open_blocking(self.settings, name="txmq depth")
        try:
            frame = connection.channel().queue_declare(queue, passive=True)
        except _AMQP_ERRORS as exc:
            error = missing_or_refused(self.settings, exc, queue, f"measuring queue {queue!r}")
            if isinstance(error, QueueNotFound):
                return 0
            raise error from exc
        finally:
            close_quietly(connection)
        return int(frame.method.message_count)

    def consumer_lag(self, group: str, topic: str) -> int:
        """The messages ready in the group's work queue (see :meth:`queue_depth`; those in
        its retry queues, waiting for their delay, are not counted).

        Raises:
            BrokerUnavailable: the broker cannot be reached.
            BrokerError: the broker refused to tell.
        """
        return self.queue_depth(work_queue(group, topic))


__all__ = ["RabbitMQAdapter"]
