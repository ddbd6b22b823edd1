"""Reading a RabbitMQ queue for administration: messages are held, then removed or given back.

A :class:`RabbitMQBrowser` fetches messages with ``basic.get`` and keeps them
unacknowledged, so nobody else gets them while it looks; :meth:`~RabbitMQBrowser.remove`
acknowledges the chosen ones and closing gives the rest back to their places.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any

from txmq.adapters.base import QueueBrowser
from txmq.adapters.rabbitmq.connection import (
    NOT_FOUND,
    channel_error,
    close_quietly,
    describe,
    open_blocking,
    pika,
    reply_code,
    unavailable,
)
from txmq.adapters.rabbitmq.settings import RabbitMQSettings
from txmq.adapters.rabbitmq.wire import decode_frame, settlement_plan
from txmq.errors import BrokerError, QueueNotFound, TopologyError
from txmq.wire import Delivery

_AMQP_ERRORS = (pika.exceptions.AMQPError, OSError)


def missing_or_refused(
    settings: RabbitMQSettings, exc: BaseException, queue: str, doing: str
) -> TopologyError | BrokerError:
    """:class:`QueueNotFound` when the broker said ``queue`` does not exist, else the
    error :func:`channel_error` makes of ``exc``."""
    if reply_code(exc) == NOT_FOUND:
        return QueueNotFound(
            f"RabbitMQ at {settings.redacted_url()} has no queue {queue!r} "
            f"({describe(settings, exc)})"
        )
    return channel_error(settings, exc, doing)


class RabbitMQBrowser(QueueBrowser):
    """See :class:`~txmq.adapters.base.QueueBrowser`; built by ``RabbitMQAdapter.browse``.

    Raises (when opened):
        QueueNotFound: the queue does not exist.
        BrokerUnavailable: the broker cannot be reached.
    """

    def __init__(self, settings: RabbitMQSettings, queue: str) -> None:
        self._settings = settings
        self._queue = queue
        # Delivery tags fetched and not settled yet, oldest first (a dict keeps order).
        self._held: dict[int, None] = {}
        self._connection = open_blocking(settings, name="txmq browse")
        try:
            self._channel = self._connection.channel()
            self._channel.queue_declare(queue, passive=True)
        except _AMQP_ERRORS as exc:
            close_quietly(self._connection)
            raise missing_or_refused(settings, exc, queue, f"opening queue {queue!r}") from exc

    def read(self, *, limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        deliveries: list[Delivery] = []
        try:
            while len(deliveries) < limit and time.monotonic() < deadline:
                method, properties, body = self._channel.basic_get(self._queue, auto_ack=False)
                if method is None:
                    break
                self._held[method.delivery_tag] = None
                deliveries.append(
                    decode_frame(self._queue, method.delivery_tag, method, properties, body)
                )
        except _AMQP_ERRORS as exc:
            raise unavailable(self._settings, exc, f"reading queue {self._queue!r}") from exc
        return deliveries

    def remove(self, deliveries: Iterable[Delivery]) -> None:
        tags = {d.token for d in deliveries if d.token in self._held}
        if not tags:
            return
        try:
            for tag, multiple in settlement_plan(self._held, tags):
                self._channel.basic_ack(delivery_tag=tag, multiple=multiple)
        except _AMQP_ERRORS as exc:
            raise unavailable(self._settings, exc, f"removing from {self._queue!r}") from exc
        for tag in tags:
            del self._held[tag]

    def close(self) -> None:
        """Give back what was read and not removed, in its order; disconnect. Idempotent."""
        connection: Any = self._connection
        if self._held and connection.is_open:
            last = next(reversed(self._held))
            # Should this fail, closing the connection gives them back as well.
            with contextlib.suppress(*_AMQP_ERRORS):
                self._channel.basic_nack(delivery_tag=last, multiple=True, requeue=True)
        self._held.clear()
        close_quietly(connection)


__all__ = ["RabbitMQBrowser", "missing_or_refused"]
