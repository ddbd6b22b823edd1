"""RabbitMQ publisher with pipelined publisher confirms.

Waiting for each confirm before the next publish costs a round trip per message (about
1.4k msg/s); keeping the whole batch unconfirmed in flight is about ten times faster. pika's
``BlockingChannel`` can only do the former, so the publisher drives an asynchronous
``SelectConnection`` from an IO thread it owns. :meth:`RabbitMQPublisher.publish` hands a
batch to that thread (``add_callback_threadsafe``) and waits for the batch's completion
event; the IO thread publishes, maps delivery tags to the batch's messages and settles them
as acks, nacks and returns arrive. The frames are txmq's own encoding
(:mod:`txmq.adapters.rabbitmq.frames`), written to pika's connection in the order published.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

from txmq.adapters.base import Publisher, PublishOutcome
from txmq.adapters.rabbitmq import frames
from txmq.adapters.rabbitmq.connection import (
    PRECONDITION_FAILED,
    connection_parameters,
    describe,
    pika,
    reply_code,
    unavailable,
)
from txmq.adapters.rabbitmq.settings import RabbitMQSettings
from txmq.adapters.rabbitmq.unroutable import (
    exchange_arguments,
    exchange_hint,
    holding_declarations,
    holding_queue_hint,
)
from txmq.adapters.rabbitmq.wire import encode_headers
from txmq.errors import (
    BrokerError,
    BrokerUnavailable,
    PublishError,
    PublishRefused,
    TopologyError,
)
from txmq.message import Message, validate_name

log = logging.getLogger("txmq.rabbitmq")

#: Exchange name AMQP gives the default exchange, which routes by queue name.
DEFAULT_EXCHANGE = ""
#: Messages framed per IO-loop turn. Between slices the loop writes what is framed and
#: reads confirms, so the broker starts on the first messages before the last are framed.
_SLICE = 64
#: Extra seconds allowed for an IO thread to finish closing its connection.
_CLOSE_GRACE = 1.0
#: Encoded ``basic.publish`` method frames kept per link, one per (exchange, routing key).
_METHOD_CACHE = 1024


class _Outgoing(NamedTuple):  # a tuple: built once per message on the hot path
    exchange: str
    routing_key: str
    message_id: str
    body: bytes
    #: The encoded content header (:func:`frames.content_header`), or why the message cannot
    #: be published to RabbitMQ as it is (it is settled with that error, never sent).
    header: bytes | PublishRefused


class Batch:
    """One publish call: its messages and what became of each.

    Settled from the IO thread (and, for messages refused before they are sent, when it is
    made), abandoned from the caller's thread on timeout; ``lock`` makes the two exclusive,
    so an outcome never changes after the caller has read it.
    """

    __slots__ = ("closed", "done", "errors", "items", "lock", "lost", "remaining", "settled")

    def __init__(self, items: list[_Outgoing]) -> None:
        self.items = items
        self.errors: list[Exception | None] = [None] * len(items)
        self.settled = [False] * len(items)
        self.remaining = len(items)
        self.lock = threading.Lock()
        self.done = threading.Event()
        #: The caller has stopped waiting (timeout or lost connection); nothing changes now.
        self.closed = False
        #: Why the connection went away before every message was settled.
        self.lost: str | None = None
        for index, item in enumerate(items):
            if isinstance(item.header, PublishRefused):
                self.settle(index, item.header)

    def settle(self, index: int, error: Exception | None) -> None:
        with self.lock:
            if self.closed or self.settled[index]:
                return
            self.settled[index] = True
            self.errors[index] = error
            self.remaining -= 1
            if self.remaining == 0:
                self.closed = True
                self.done.set()

    def connection_lost(self, reason: str) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.lost = reason
            self.done.set()

    def abandon(self, timeout: float) -> None:
        """Fail every message not settled yet: the caller stops waiting for them."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            for index, settled in enumerate(self.settled):
                if not settled:
                    self.errors[index] = PublishError(
                        f"message {self.items[index].message_id} not confirmed by RabbitMQ "
                        f"within {timeout:g} s"
                    )

    def outcomes(self) -> list[PublishOutcome]:
        return [
            PublishOutcome(item.message_id, error)
            for item, error in zip(self.items, self.errors, strict=True)
        ]


class _Link:
    """One ``SelectConnection`` in confirm mode and the IO thread that drives it.

    Attributes other than ``_lock``-guarded ones belong to the IO thread. A link never
    reconnects: once it is dead the publisher replaces it.
    """

    def __init__(self, settings: RabbitMQSettings, *, name: str, node: int = 0) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._dead = False  # guarded by _lock
        # Set by a nack: the publisher replaces this link before its next publish (read
        # without the lock: a bool flips atomically, and only ever from False to True).
        self._nacked = False
        self._batches: set[Batch] = set()  # guarded by _lock: submitted, not yet finished
        self._ready = threading.Event()
        self._failure: Exception | None = None  # why the link could not be opened
        self._channel: Any = None
        # Delivery tags on a confirm-mode channel count publishes from 1.
        self._next_tag = 1
        self._oldest_unconfirmed = 1
        self._pending: dict[int, tuple[Batch, int]] = {}
        self._methods: dict[tuple[str, str], bytes] = {}  # see frames.publish_method
        # basic.return arrives before the basic.ack of the same publish; remember why the
        # message came back, by (message id, exchange, routing key), until its ack settles it.
        self._returned: dict[tuple[str, str, str], str] = {}
        self._connection = pika.SelectConnection(
            connection_parameters(settings, name=name, node=node),
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_connection_closed,
        )
        self._thread = threading.Thread(target=self._run, name=f"{name} io", daemon=True)
        self._thread.start()

    # --- caller's thread -------------------------------------------------------------

    @property
    def dead(self) -> bool:
        """Lost, or it received a nack: a channel whose quorum-queue publishes were nacked
        while a queue's leader moved to another node can go on nacking every publish
        (seen on RabbitMQ 3.10 for minutes); a new channel finds the new leader."""
        with self._lock:
            return self._dead or self._nacked

    def wait_ready(self) -> None:
        """Block until the channel is in confirm mode.

        Raises:
            BrokerUnavailable: the connection could not be opened in time.
            TopologyError: the deployment exchange exists with another type.
        """
        timeout = self._settings.common.connect_timeout
        if not self._ready.wait(timeout + _CLOSE_GRACE):
            self.close()
            raise BrokerUnavailable(
                f"RabbitMQ at {self._settings.redacted_url()} did not open a publisher "
                f"channel within {timeout:g} s"
            )
        if self._failure is not None:
            self.close()
            raise self._failure

    def submit(self, batch: Batch) -> bool:
        """Hand ``batch`` to the IO thread; ``False`` if the link is already dead."""
        with self._lock:
            if self._dead:
                return False
            self._batches.add(batch)
        self._connection.ioloop.add_callback_threadsafe(functools.partial(self._send, batch, 0))
        return True

    def forget(self, batch: Batch) -> None:
        with self._lock:
            self._batches.discard(batch)

    def close(self) -> None:
        if self._thread.is_alive():
            self._connection.ioloop.add_callback_threadsafe(self._close_connection)
            self._thread.join(self._settings.common.connect_timeout + _CLOSE_GRACE)

    # --- IO thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._connection.ioloop.start()
        except Exception:
            log.exception("txmq publisher IO loop failed; closing its connection")
            self._die("the publisher's IO loop failed")
            # Run the loop once more so the connection closes instead of lingering.
            with contextlib.suppress(Exception):
                self._close_connection()
                self._connection.ioloop.start()
        finally:
            self._die("the publisher's IO loop stopped")
            self._connection.ioloop.close()

    def _die(self, reason: str) -> None:
        with self._lock:
            self._dead = True
            batches, self._batches = self._batches, set()
        for batch in batches:
            batch.connection_lost(reason)
        self._ready.set()

    def _fail_open(self, error: Exception, cause: BaseException) -> None:
        if not self._ready.is_set():
            error.__cause__ = cause
            self._failure = error

    def _on_open_error(self, _connection: Any, exc: BaseException) -> None:
        self._fail_open(unavailable(self._settings, exc, "connecting"), exc)
        self._connection.ioloop.stop()

    def _on_connection_closed(self, _connection: Any, reason: BaseException) -> None:
        self._fail_open(unavailable(self._settings, reason, "opening a publisher channel"), reason)
        self._die(describe(self._settings, reason))
        self._connection.ioloop.stop()

    def _close_connection(self) -> None:
        if self._connection.is_closed:
            self._connection.ioloop.stop()
        elif not self._connection.is_closing:
            self._connection.close()

    def _on_connection_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        self._declare_next(holding_declarations(self._settings))

    def _declare_next(self, steps: list[tuple[str, dict[str, Any]]]) -> None:
        """The holding queue's declarations one by one, then the deployment exchange:
        publishing to a missing exchange would close the channel, and declaring it
        (idempotent) turns "nothing declared yet" into held (or returned) messages."""
        if steps:
            (method, arguments), rest = steps[0], steps[1:]
            getattr(self._channel, method)(
                **arguments, callback=lambda _frame: self._declare_next(rest)
            )
            return
        self._channel.exchange_declare(
            self._settings.exchange,
            exchange_type="topic",
            durable=True,
            arguments=exchange_arguments(self._settings),
            callback=self._on_exchange_declared,
        )

    def _on_exchange_declared(self, _frame: Any) -> None:
        self._channel.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: self._ready.set()
        )

    def _on_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        if reply_code(reason) == PRECONDITION_FAILED and "x-queue-type" in str(reason):
            self._fail_open(
                TopologyError(
                    f"{holding_queue_hint(self._settings)}: {describe(self._settings, reason)}"
                ),
                reason,
            )
        elif reply_code(reason) == PRECONDITION_FAILED:
            self._fail_open(
                TopologyError(
                    f"exchange {self._settings.exchange!r} exists but is not a durable topic "
                    f"exchange as txmq declares it ({exchange_hint(self._settings)}): "
                    f"{describe(self._settings, reason)}"
                ),
                reason,
            )
        else:
            self._fail_open(
                unavailable(self._settings, reason, "opening a publisher channel"), reason
            )
        # Unsettled publishes on this channel will never be confirmed.
        self._die(describe(self._settings, reason))
        if not (self._connection.is_closing or self._connection.is_closed):
            self._connection.close()

    def _send(self, batch: Batch, start: int) -> None:
        if batch.closed:  # the caller gave up on it (or every message was refused)
            return
        if not self._channel.is_open:
            batch.connection_lost(f"the publisher channel is {self._channel_state()}")
            return
        connection = self._connection
        channel = self._channel.channel_number
        body_max = connection._body_max_length  # the negotiated frame_max, less 8
        methods = self._methods
        pending = self._pending
        end = min(start + _SLICE, len(batch.items))
        for index in range(start, end):
            item = batch.items[index]
            header = item.header
            if isinstance(header, PublishRefused):
                continue  # settled when the batch was made
            if len(header) > body_max:
                # RabbitMQ would close the connection on the frame (FRAME_ERROR), and every
                # batch holding the message would fail as an outage.
                batch.settle(
                    index,
                    _refused(
                        item,
                        f"its headers take {len(header)} bytes, "
                        f"more than one frame carries on this connection ({body_max})",
                    ),
                )
                continue
            target = (item.exchange, item.routing_key)
            method = methods.get(target)
            if method is None:
                if len(methods) >= _METHOD_CACHE:
                    methods.clear()
                try:
                    method = methods[target] = frames.publish_method(channel, *target)
                except PublishRefused as exc:  # names are validated: not seen so far
                    batch.settle(index, _refused(item, str(exc)))
                    continue
            data = frames.message_frames(method, channel, header, item.body, body_max)
            try:
                # What basic_publish ends with, minus its per-message marshalling: the
                # connection counts the bytes (heartbeats read the count; its frame count,
                # a statistic, goes up by one per message) and buffers them.
                connection._output_marshaled_frames((data,))
            except (pika.exceptions.AMQPError, OSError) as exc:  # defensive: pika drops
                batch.connection_lost(describe(self._settings, exc))  # writes once closed
                return
            pending[self._next_tag] = (batch, index)
            self._next_tag += 1
        if end < len(batch.items):
            connection.ioloop.add_callback(functools.partial(self._send, batch, end))

    def _channel_state(self) -> str:
        return "closing" if self._channel.is_closing else "closed"

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        if method.exchange == DEFAULT_EXCHANGE:
            reason = f"no queue named {method.routing_key!r}"
        else:
            reason = f"no queue bound for topic {method.routing_key!r}"
        returned = (properties.message_id, method.exchange, method.routing_key)
        self._returned[returned] = f"{reason} ({method.reply_text})"

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nacked = isinstance(method, pika.spec.Basic.Nack)
        tag = method.delivery_tag
        if method.multiple:
            tags: range | tuple[int] = range(self._oldest_unconfirmed, tag + 1)
        else:
            tags = (tag,)
        pending, returned = self._pending, self._returned
        for confirmed in tags:
            entry = pending.pop(confirmed, None)
            if entry is None:
                continue
            batch, index = entry
            item = batch.items[index]
            error: Exception | None = None
            reason = (
                returned.pop((item.message_id, item.exchange, item.routing_key), None)
                if returned
                else None
            )
            if reason is not None:
                error = PublishError(f"message {item.message_id} was returned: {reason}")
            elif nacked:
                error = PublishError(f"message {item.message_id} was rejected (nack) by RabbitMQ")
                self._nacked = True
            batch.settle(index, error)
        while self._oldest_unconfirmed < self._next_tag and self._oldest_unconfirmed not in pending:
            self._oldest_unconfirmed += 1


class RabbitMQPublisher(Publisher):
    """Publishes persistent messages with pipelined confirms; see :class:`Publisher`.

    The connection is opened on first use and reopened by the first publish after it was
    lost. Use from one thread at a time.
    """

    def __init__(self, settings: RabbitMQSettings) -> None:
        self._settings = settings
        self._link: _Link | None = None
        self._closed = False

    def publish(
        self, messages: Sequence[Message], *, timeout: float | None = None
    ) -> list[PublishOutcome]:
        exchange = self._settings.exchange
        return self._publish([(exchange, m.topic, m) for m in messages], timeout)

    def send_to_queue(
        self, queue: str, messages: Sequence[Message], *, timeout: float | None = None
    ) -> list[PublishOutcome]:
        validate_name(queue, "queue")
        return self._publish([(DEFAULT_EXCHANGE, queue, m) for m in messages], timeout)

    def connect(self) -> None:
        if self._closed:
            raise BrokerError("the publisher is closed")
        self._live_link()

    def close(self) -> None:
        self._closed = True
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def _publish(
        self, targets: list[tuple[str, str, Message]], timeout: float | None
    ) -> list[PublishOutcome]:
        if self._closed:
            raise BrokerError("the publisher is closed")
        if not targets:
            return []
        limit = self._settings.common.max_body_bytes
        for _, _, message in targets:
            message.check_size(limit)
        batch = Batch([outgoing(*target) for target in targets])
        if batch.done.is_set():  # every message refused: nothing to send
            return batch.outcomes()
        link = self._live_link()
        if not link.submit(batch):
            # Lost between the check and the hand-off, before anything was sent.
            link = self._live_link()
            if not link.submit(batch):
                raise BrokerUnavailable(
                    f"RabbitMQ at {self._settings.redacted_url()} closed the publisher "
                    "connection right after opening it"
                )
        wait = self._settings.common.publish_timeout if timeout is None else timeout
        try:
            if not batch.done.wait(wait):
                batch.abandon(wait)
        finally:
            link.forget(batch)
        if batch.lost is not None:
            raise BrokerUnavailable(
                f"lost the connection to RabbitMQ at {self._settings.redacted_url()} with "
                f"{batch.remaining} of {len(batch.items)} messages unconfirmed (their outcome "
                f"is unknown): {batch.lost}"
            )
        return batch.outcomes()

    def _live_link(self) -> _Link:
        if self._link is not None and not self._link.dead:
            return self._link
        if self._link is not None:
            self._link.close()
            self._link = None
        # The nodes of a cluster in order, like pika's BlockingConnection does with a list.
        for node in range(len(self._settings.nodes)):
            last = node == len(self._settings.nodes) - 1
            try:
                link = _Link(self._settings, name="txmq publisher", node=node)
            except (pika.exceptions.AMQPError, OSError) as exc:
                if last:
                    raise unavailable(self._settings, exc, "connecting") from exc
                continue
            try:
                link.wait_ready()
            except BrokerUnavailable:
                if last:
                    raise
                continue
            self._link = link
            return link
        raise AssertionError("settings.nodes is never empty")  # pragma: no cover


def outgoing(exchange: str, routing_key: str, message: Message) -> _Outgoing:
    try:
        header: bytes | PublishRefused = frames.content_header(
            message.id, encode_headers(message), len(message.body)
        )
    except PublishRefused as exc:
        header = PublishRefused(f"message {message.id} cannot go to RabbitMQ: {exc}")
    return _Outgoing(exchange, routing_key, message.id, message.body, header)


def _refused(item: _Outgoing, reason: str) -> PublishRefused:
    return PublishRefused(f"message {item.message_id} cannot go to RabbitMQ: {reason}")
