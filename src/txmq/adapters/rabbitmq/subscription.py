"""RabbitMQ manual-ack subscription over a ``BlockingConnection``.

The broker pushes up to ``prefetch`` unacknowledged messages; they wait in a local buffer
until :meth:`RabbitMQSubscription.poll` hands them out. Heartbeats are answered only while
pika runs, i.e. inside :meth:`poll`, :meth:`ack` and :meth:`release`, so a consumer must call
them at least once per heartbeat interval.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
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

#: Largest prefetch count AMQP can express (a 16-bit field; 0 would mean unlimited).
MAX_PREFETCH = 65535


class RabbitMQSubscription(Subscription):
    """Consumes ``sources`` (queue names) with manual acks; see :class:`Subscription`.

    ``prefetch`` bounds the unacknowledged messages of each source queue (RabbitMQ applies
    ``basic.qos`` per consumer).

    Raises (when opened):
        BrokerUnavailable: the broker cannot be reached.
        TopologyError: a source queue does not exist.
    """

    def __init__(
        self, settings: RabbitMQSettings, group: str, sources: Sequence[str], *, prefetch: int
    ) -> None:
        if not 0 < prefetch <= MAX_PREFETCH:
            raise ConfigurationError(f"prefetch must be between 1 and {MAX_PREFETCH}")
        self._settings = settings
        self._buffer: deque[Delivery] = deque()
        # Delivery tags received and not settled yet, oldest first (a dict keeps order).
        self._outstanding: dict[int, None] = {}
        self._closed = False
        self._sources: dict[str, str] = {}  # consumer tag -> queue
        self._cancelled: list[str] = []  # queues whose consumer the broker cancelled
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
        except (pika.exceptions.AMQPError, OSError) as exc:
            close_quietly(self._connection)
            raise channel_error(settings, exc, f"consuming from queue {source!r}") from exc

    def poll(self, timeout: float, max_messages: int = 100) -> list[Delivery]:
        self._check_open()
        deadline = time.monotonic() + timeout
        try:
            # Take in what has already arrived (and answer heartbeats) even when the
            # buffer is not empty.
            self._connection.process_data_events(time_limit=0)
            while not (self._buffer or self._cancelled):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._connection.process_data_events(time_limit=remaining)
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise unavailable(self._settings, exc, "consuming") from exc
        if self._cancelled and not self._buffer:
            # Without this the subscription would just go quiet.
            raise BrokerUnavailable(
                f"RabbitMQ at {self._settings.redacted_url()} cancelled consuming from "
                f"{', '.join(map(repr, self._cancelled))} (queue deleted or moved?)"
            )
        count = min(max_messages, len(self._buffer))
        return [self._buffer.popleft() for _ in range(count)]

    def ack(self, deliveries: Iterable[Delivery]) -> None:
        self._settle(deliveries, self._channel.basic_ack, "acknowledging")

    def release(self, deliveries: Iterable[Delivery]) -> None:
        self._settle(
            deliveries,
            functools.partial(self._channel.basic_nack, requeue=True),
            "releasing",
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Unsettled messages, buffered ones included, go back to their queues when the
        # channel closes.
        self._buffer.clear()
        self._outstanding.clear()
        close_quietly(self._connection)

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError("the subscription is closed")

    def _on_cancel(self, frame: Any) -> None:
        self._cancelled.append(self._sources.get(frame.method.consumer_tag, "?"))

    def _on_message(
        self, source: str, _channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        tag = method.delivery_tag
        self._outstanding[tag] = None
        self._buffer.append(decode_frame(source, tag, method, properties, body))

    def _settle(
        self,
        deliveries: Iterable[Delivery],
        send: Callable[..., None],
        doing: str,
    ) -> None:
        self._check_open()
        outstanding = self._outstanding
        # A tag settled twice (or not ours) would make the broker close the channel.
        tags = {d.token for d in deliveries if d.token in outstanding}
        if not tags:
            return
        try:
            for tag, multiple in settlement_plan(outstanding, tags):
                send(delivery_tag=tag, multiple=multiple)
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise unavailable(self._settings, exc, doing) from exc
        for tag in tags:
            del outstanding[tag]
