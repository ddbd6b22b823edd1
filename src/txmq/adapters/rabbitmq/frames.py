"""The AMQP 0-9-1 frames of a ``basic.publish``, encoded by txmq.

pika's ``basic_publish`` builds a method object, a properties object and three frame
objects per message and marshals them field by field. What txmq publishes has one shape (a
persistent message with a ``message_id`` and text headers, ``mandatory``), so the publisher
encodes it directly: the ``basic.publish`` method frame is the same for every message to
one exchange and routing key and is encoded once, and the content header is three fields
packed in a few calls. For a relay's message with four headers that is 3.7 µs instead of
13.7 µs; ``docs/performance.md`` has what it does to the publisher and the relay. The
publisher's IO thread hands the bytes to pika's connection, which writes them in order with
everything else on it.

The bytes are pika's own, byte for byte (the unit tests compare them with pika's
marshalling). Nothing here talks to a broker.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from txmq.adapters.rabbitmq.wire import PERSISTENT
from txmq.errors import PublishRefused

_METHOD, _HEADER, _BODY = 1, 2, 3
_FRAME_END = b"\xce"
_BASIC_CLASS = 60
_BASIC_PUBLISH = 40
_MANDATORY = 0x01
#: Property flags of the content header: ``headers``, ``delivery_mode``, ``message_id``.
_PROPERTY_FLAGS = 0x2000 | 0x1000 | 0x0080
#: Longest AMQP short string (exchange, routing key, header name, ``message_id``), in bytes.
SHORT_STRING_MAX = 255
#: Bytes a frame adds around its payload: type, channel, size, and the end octet.
FRAME_OVERHEAD = 8

_frame_start = struct.Struct(">BHI").pack
_short = struct.Struct(">B").pack
_text_value = struct.Struct(">cI").pack
_long = struct.Struct(">I").pack
_header_start = struct.Struct(">HHQH").pack
_method_start = struct.Struct(">HHH").pack


def _short_string(text: str, what: str) -> bytes:
    encoded = text.encode()
    if len(encoded) > SHORT_STRING_MAX:
        raise PublishRefused(
            f"{what} is {len(encoded)} bytes of UTF-8; AMQP allows at most {SHORT_STRING_MAX}"
        )
    return _short(len(encoded)) + encoded


def publish_method(channel: int, exchange: str, routing_key: str) -> bytes:
    """The method frame of a mandatory ``basic.publish`` to ``exchange`` with
    ``routing_key``.

    Raises:
        PublishRefused: the exchange or routing key is longer than AMQP allows.
    """
    payload = b"".join(
        (
            _method_start(_BASIC_CLASS, _BASIC_PUBLISH, 0),  # ticket: reserved, 0
            _short_string(exchange, "the exchange name"),
            _short_string(routing_key, "the routing key"),
            _short(_MANDATORY),
        )
    )
    return _frame_start(_METHOD, channel, len(payload)) + payload + _FRAME_END


def content_header(message_id: str, headers: Mapping[str, str], body_size: int) -> bytes:
    """The payload of the content header of a persistent message with ``message_id`` and
    text ``headers``, carrying ``body_size`` bytes (frame it with :func:`message_frames`).

    Raises:
        PublishRefused: the message id or a header name is longer than AMQP allows; the
            message cannot be published to RabbitMQ as it is.
    """
    table: list[bytes] = []
    for name, value in headers.items():
        encoded_name, encoded = name.encode(), value.encode()
        if len(encoded_name) > SHORT_STRING_MAX:
            raise PublishRefused(
                f"header name {name[:40]!r}... is {len(encoded_name)} bytes of UTF-8; AMQP "
                f"allows at most {SHORT_STRING_MAX}"
            )
        table += (_short(len(encoded_name)), encoded_name, _text_value(b"S", len(encoded)), encoded)
    fields = b"".join(table)
    return b"".join(
        (
            _header_start(_BASIC_CLASS, 0, body_size, _PROPERTY_FLAGS),  # weight: 0
            _long(len(fields)),
            fields,
            _short(PERSISTENT),
            _short_string(message_id, "the message id"),
        )
    )


def message_frames(method: bytes, channel: int, header: bytes, body: bytes, body_max: int) -> bytes:
    """``method`` (from :func:`publish_method`), then the content header frame around
    ``header`` (from :func:`content_header`) and the body frames of ``body``, each carrying
    at most ``body_max`` bytes (the negotiated ``frame_max`` less :data:`FRAME_OVERHEAD`).

    A ``header`` longer than ``body_max`` does not fit in its frame: check it first
    (RabbitMQ closes the connection on such a frame)."""
    parts = [method, _frame_start(_HEADER, channel, len(header)), header, _FRAME_END]
    for start in range(0, len(body), body_max):
        chunk = body[start : start + body_max]
        parts += (_frame_start(_BODY, channel, len(chunk)), chunk, _FRAME_END)
    return b"".join(parts)
