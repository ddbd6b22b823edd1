"""Messages no queue is bound for yet, on RabbitMQ: held, not refused.

Kafka keeps a message in its topic whether or not a consumer group exists yet. To give
RabbitMQ the same story, the deployment exchange ``X`` gets an alternate exchange: a
message that matches no binding goes to the fanout exchange ``X.unroutable`` and its
durable queue ``X.unroutable``, with its routing key (the topic) and properties intact, and
the publish is confirmed. When a consumer declares its queues for a topic, the topic's held
messages are moved into its new work queues before they are bound (:func:`move_into_queues`),
so the first consumer group of a topic receives what was published before it existed, ahead
of anything published later; :func:`reroute` publishes held messages to ``X`` again (what was
held while the queues were being bound, and ``txmq unroutable reroute``).

RabbitMQ does not let an existing exchange change its arguments: an exchange declared by an
older txmq (without the alternate exchange) is refused with PRECONDITION_FAILED, and the
error says what to do (:data:`EXCHANGE_HINT`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from txmq.adapters.rabbitmq.connection import channel_error, close_quietly, open_blocking, pika
from txmq.adapters.rabbitmq.settings import RabbitMQSettings

log = logging.getLogger("txmq.rabbitmq")

#: Most held messages one re-route looks at: each is delivered to it, so a holding queue that
#: keeps growing (a topic published but never consumed) would otherwise slow every consumer
#: start.
SCAN_LIMIT = 10_000

#: The most unacknowledged deliveries RabbitMQ lets one consumer hold (a 16-bit field).
MAX_PREFETCH = 65_535
#: Seconds a re-route waits for the next held message before it takes the queue as emptied.
TAKE_IDLE = 5.0

#: Seconds a re-route waits for another one to release the exchange's lock, and between tries.
LOCK_TIMEOUT = 60.0
LOCK_POLL = 0.2

#: AMQP reply code for an exclusive queue another connection owns.
RESOURCE_LOCKED = 405

#: What to do about an exchange whose declaration does not match txmq's.
EXCHANGE_HINT = (
    "it must be a durable topic exchange, and with ?unroutable=hold (the default) have the "
    "alternate exchange {unroutable!r}; an exchange declared by an older txmq has none: "
    "delete it (consumers bind their queues again at start) or add ?unroutable=return to "
    "the broker URL"
)


def unroutable_name(settings: RabbitMQSettings) -> str:
    """The alternate exchange and queue holding the deployment's unroutable messages."""
    return f"{settings.exchange}.unroutable"


def exchange_arguments(settings: RabbitMQSettings) -> dict[str, Any] | None:
    """Declaration arguments of the deployment exchange."""
    if settings.unroutable == "hold":
        return {"alternate-exchange": unroutable_name(settings)}
    return None


def exchange_hint(settings: RabbitMQSettings) -> str:
    return EXCHANGE_HINT.format(unroutable=unroutable_name(settings))


def holding_queue_hint(settings: RabbitMQSettings) -> str:
    """What to do when the holding queue exists with another queue type."""
    name = unroutable_name(settings)
    return (
        f"the holding queue {name!r} exists with another x-queue-type than "
        f"queue_type={settings.queue_type}: give deployments of each queue type their own "
        f"exchange (?exchange=...), or move the held messages (txmq unroutable reroute) and "
        f"delete {name!r}"
    )


def holding_declarations(settings: RabbitMQSettings) -> list[tuple[str, dict[str, Any]]]:
    """``(method, keyword arguments)`` of the channel calls that make the holding queue,
    before the deployment exchange is declared (none with ``unroutable=return``)."""
    if settings.unroutable != "hold":
        return []
    name = unroutable_name(settings)
    return [
        ("exchange_declare", {"exchange": name, "exchange_type": "fanout", "durable": True}),
        (
            "queue_declare",
            # Of the deployment's queue type: every publisher declares it, and a classic
            # queue lives on one node, so in a cluster that node being down would stop
            # every publish. (Deployments of both types therefore need their own exchange.)
            {
                "queue": name,
                "durable": True,
                "arguments": {"x-queue-type": settings.queue_type},
            },
        ),
        ("queue_bind", {"queue": name, "exchange": name}),
    ]


def declare_exchanges(channel: Any, settings: RabbitMQSettings) -> None:
    """Declare the holding queue and the deployment exchange on a blocking channel."""
    for method, arguments in holding_declarations(settings):
        getattr(channel, method)(**arguments)
    channel.exchange_declare(
        settings.exchange,
        exchange_type="topic",
        durable=True,
        arguments=exchange_arguments(settings),
    )


def reroute(
    settings: RabbitMQSettings,
    topics: Collection[str] | None = None,
    *,
    scan_limit: int | None = SCAN_LIMIT,
) -> int:
    """Publish the held messages of ``topics`` (all with ``None``) to the exchange again,
    on a connection of its own that holds the exchange's re-route lock (:func:`take_lock`).

    Each is acknowledged in the holding queue only once RabbitMQ confirmed its new
    publish; one whose topic still has no bound queue comes back to the holding queue.
    The others stay where they are, in order. At most ``scan_limit`` held messages, from
    the head of the queue, are looked at (``None``: all); a warning says when more wait.
    Returns how many were re-published.

    Raises:
        BrokerUnavailable: RabbitMQ cannot be reached, or another re-route held the lock
            for :data:`LOCK_TIMEOUT` seconds.
        TopologyError: the exchange or the holding queue exists with other settings.
    """
    if settings.unroutable != "hold":
        return 0
    name = unroutable_name(settings)
    connection = open_blocking(settings, name="txmq reroute")
    try:
        take_lock(connection, settings)
        channel = connection.channel()
        declare_exchanges(channel, settings)
        channel.confirm_delivery()
        return reroute_on(channel, settings, topics, scan_limit=scan_limit)
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise channel_error(settings, exc, f"re-routing the messages held in {name!r}") from exc
    finally:
        close_quietly(connection)


def take_lock(connection: Any, settings: RabbitMQSettings) -> None:
    """Hold the exchange's re-route lock for the life of ``connection``, waiting up to
    :data:`LOCK_TIMEOUT` seconds for another holder.

    The lock is the exclusive queue ``<exchange>.unroutable.lock``: RabbitMQ refuses it to
    every other connection and deletes it when its connection closes, so a crashed holder
    releases it. Without it two consumers starting at once would take the held messages
    in turns and forward them interleaved, out of order.

    Raises:
        pika.exceptions.AMQPError, OSError: for the caller to translate (the last refusal,
            RESOURCE_LOCKED, once the timeout passed).
    """
    lock = f"{unroutable_name(settings)}.lock"
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            connection.channel().queue_declare(lock, exclusive=True, auto_delete=True)
            return
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != RESOURCE_LOCKED or time.monotonic() > deadline:
                raise
        connection.sleep(LOCK_POLL)  # serves the connection's heartbeats meanwhile


def reroute_on(
    channel: Any,
    settings: RabbitMQSettings,
    topics: Collection[str] | None,
    *,
    scan_limit: int | None = SCAN_LIMIT,
) -> int:
    """:func:`reroute` on a channel in confirm mode whose connection holds the lock.

    Raises:
        pika.exceptions.AMQPError, OSError: for the caller to translate.
    """

    def to_exchange(method: Any, properties: Any, body: bytes) -> None:
        channel.basic_publish(settings.exchange, method.routing_key, body, properties)

    return _take_held(channel, settings, topics, to_exchange, scan_limit=scan_limit)


def move_into_queues(
    channel: Any,
    settings: RabbitMQSettings,
    queues: Mapping[str, Collection[str]],
    *,
    scan_limit: int | None = SCAN_LIMIT,
) -> int:
    """Move the held messages of each topic into its ``queues[topic]`` directly (through
    the default exchange), on a channel in confirm mode whose connection holds the lock
    (:func:`take_lock`).

    Done before those queues are bound to the exchange: no live message of the topic can
    reach them yet, so the held ones are ahead of every live one, in their order. Each is
    acknowledged in the holding queue once every copy was confirmed (a crash in between
    leaves a duplicate, never a loss). Returns how many held messages were moved.

    Raises:
        pika.exceptions.AMQPError, OSError: for the caller to translate.
    """
    if settings.unroutable != "hold":
        return 0

    def to_queues(method: Any, properties: Any, body: bytes) -> None:
        for queue in queues[method.routing_key]:
            # mandatory: a queue deleted meanwhile is an error, not a silent drop.
            channel.basic_publish("", queue, body, properties, mandatory=True)

    return _take_held(channel, settings, set(queues), to_queues, scan_limit=scan_limit)


def _take_held(
    channel: Any,
    settings: RabbitMQSettings,
    topics: Collection[str] | None,
    forward: Callable[[Any, Any, bytes], None],
    *,
    scan_limit: int | None,
) -> int:
    """Forward the held messages of ``topics`` (all with ``None``), acknowledging each
    after ``forward`` returned; the others are given back in their places."""
    name = unroutable_name(settings)
    waiting = channel.queue_declare(name, passive=True).method.message_count
    # Those looked at but kept stay unacknowledged until the end: no more than RabbitMQ
    # lets one consumer hold (all of them are taken when every topic is).
    limit = scan_limit
    if topics is not None:
        limit = MAX_PREFETCH if limit is None else min(limit, MAX_PREFETCH)
    if limit is not None and waiting > limit:
        log.warning(
            "%d messages are held in %r (topics nobody consumes?); re-routing looks at "
            "the first %d only: run `txmq unroutable reroute` for the rest",
            *(waiting, name, limit),
        )
        waiting = limit
    if waiting == 0:
        return 0
    # Streamed to a channel of its own (basic_get was one round trip per held message:
    # 10,000 held messages of topics nobody consumes took 20-30 s at every declare).
    taker = channel.connection.channel()
    try:
        taker.basic_qos(prefetch_count=min(waiting, MAX_PREFETCH))
        moved = 0
        last_kept = None
        deliveries = taker.consume(name, auto_ack=False, inactivity_timeout=TAKE_IDLE)
        for seen, (method, properties, body) in enumerate(deliveries, start=1):
            if method is None:
                break  # fewer than counted: another client took some meanwhile
            if topics is not None and method.routing_key not in topics:
                last_kept = method.delivery_tag  # given back below, all at once, in place
            else:
                forward(method, properties, body)
                taker.basic_ack(method.delivery_tag)
                moved += 1
            if seen >= waiting:
                break
        if last_kept is not None:
            # Up to the last one looked at; cancel() gives back any delivered after it.
            taker.basic_nack(delivery_tag=last_kept, multiple=True, requeue=True)
        taker.cancel()
    finally:
        close_quietly(taker)
    return moved
