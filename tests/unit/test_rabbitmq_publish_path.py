"""The publisher's IO-thread side without a broker: what ``_Link._send`` writes, which
delivery tags it expects confirms for, and how confirms settle the batch."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pika
from pika import frame, spec

from txmq.adapters.rabbitmq.publisher import Batch, _Link, outgoing
from txmq.adapters.rabbitmq.settings import RabbitMQSettings
from txmq.adapters.rabbitmq.wire import PERSISTENT, encode_headers
from txmq.adapters.registry import parse_broker_url
from txmq.errors import PublishRefused
from txmq.message import Message

BODY_MAX = 4096


class FakeConnection:
    """What ``_send`` uses of pika's SelectConnection: the output method, the negotiated
    body size and the IO loop's ``add_callback`` (run later, by :meth:`run_callbacks`)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.later: list[Callable[[], None]] = []
        self._body_max_length = BODY_MAX
        self.ioloop = SimpleNamespace(add_callback=self.later.append)

    def _output_marshaled_frames(self, frames: tuple[bytes, ...]) -> None:
        self.written.extend(frames)

    def run_callbacks(self) -> None:
        while self.later:
            self.later.pop(0)()


def link() -> tuple[_Link, FakeConnection]:
    settings = parse_broker_url("rabbitmq://127.0.0.1/")
    assert isinstance(settings, RabbitMQSettings)
    connection = FakeConnection()
    made = _Link.__new__(_Link)  # no IO thread, no socket
    made._settings = settings
    made._connection = connection
    made._channel = SimpleNamespace(is_open=True, is_closing=False, channel_number=3)
    made._methods, made._pending, made._returned = {}, {}, {}
    made._next_tag = made._oldest_unconfirmed = 1
    made._nacked = False
    return made, connection


def pika_bytes(message: Message) -> bytes:
    properties = pika.BasicProperties(
        message_id=message.id, delivery_mode=PERSISTENT, headers=encode_headers(message)
    )
    publish = spec.Basic.Publish(exchange="txmq", routing_key=message.topic, mandatory=True)
    parts = [frame.Method(3, publish).marshal(), frame.Header(3, len(message.body), properties)]
    body = message.body
    return b"".join(
        [parts[0], parts[1].marshal()]
        + [frame.Body(3, body[i : i + BODY_MAX]).marshal() for i in range(0, len(body), BODY_MAX)]
    )


def confirm(sent: _Link, tag: int, *, multiple: bool, nack: bool = False) -> None:
    method: Any = (spec.Basic.Nack if nack else spec.Basic.Ack)(tag, multiple)
    sent._on_confirm(SimpleNamespace(method=method))


def test_send_writes_pikas_bytes_in_slices_and_expects_a_confirm_per_message_sent() -> None:
    messages = [Message("t", b"m%d" % n * 1500, key="k") for n in range(70)]
    messages[5] = Message("t", b"", headers={"h" * 256: "v"})  # refused when the batch is made
    messages[9] = Message("t", b"", headers={"big": "v" * BODY_MAX})  # no frame holds it
    batch = Batch([outgoing("txmq", m.topic, m) for m in messages])
    sent, connection = link()

    sent._send(batch, 0)
    assert len(connection.written) == 62  # the first slice of 64, less the two refused
    connection.run_callbacks()  # the rest, one IO-loop turn later
    published = [m for n, m in enumerate(messages) if n not in (5, 9)]
    assert connection.written == [pika_bytes(m) for m in published]
    assert [index for _, index in sent._pending.values()] == [
        n for n in range(70) if n not in (5, 9)
    ]
    assert list(sent._pending) == list(range(1, 69))
    assert not batch.done.is_set()

    confirm(sent, 40, multiple=True)
    confirm(sent, 41, multiple=False, nack=True)
    confirm(sent, 68, multiple=True)
    assert batch.done.is_set()
    outcomes = batch.outcomes()
    assert [n for n, o in enumerate(outcomes) if not o.ok] == [5, 9, 42]  # tag 41: message 42
    assert all(isinstance(outcomes[n].error, PublishRefused) for n in (5, 9))
    assert "more than one frame carries" in str(outcomes[9].error)
    assert "nack" in str(outcomes[42].error)
    assert sent._nacked  # the publisher replaces a link that was nacked
    assert not sent._pending


def test_a_closed_channel_fails_the_batch_as_a_lost_connection_and_writes_nothing() -> None:
    batch = Batch([outgoing("txmq", "t", Message("t", b"x"))])
    sent, connection = link()
    sent._channel.is_open = False
    sent._send(batch, 0)
    assert connection.written == []
    assert batch.lost == "the publisher channel is closed"
