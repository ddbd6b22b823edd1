"""txmq messages on the AMQP wire, and how settled delivery tags are grouped into acks.

Nothing here talks to a broker, so it is tested without one.

The wire format is :mod:`txmq.wire.codec`'s; on AMQP the body is the message body, the
``message_id`` property is the message id, and the ``headers`` table holds the wire headers
as text. RabbitMQ's own headers (``x-death`` ...) are left out when decoding, and other
AMQP field types (numbers, booleans, timestamps) are read as text.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from txmq.errors import MessageDecodeError
from txmq.message import Message
from txmq.wire import Delivery, decode_or_raw, message_from_wire, wire_headers

#: ``delivery_mode`` of a message RabbitMQ writes to disk.
PERSISTENT = 2

#: Headers RabbitMQ itself adds (dead-lettering, quorum delivery counts, shovels). They
#: describe the transport, not the message, and are not str -> str, so decoding drops them.
_BROKER_HEADERS = frozenset(
    {"x-death", "x-delivery-count", "x-received-from", "x-shovelled", "x-shovelled-timestamp"}
)
_BROKER_HEADER_PREFIXES = ("x-first-death-", "x-last-death-")


def encode_headers(message: Message) -> dict[str, str]:
    """The AMQP ``headers`` table carrying ``message``: the wire headers, as text."""
    return wire_headers(message)


def _is_broker_header(name: str) -> bool:
    return name in _BROKER_HEADERS or name.startswith(_BROKER_HEADER_PREFIXES)


def _header_text(value: object) -> str | None:
    """``value`` as header text, or ``None`` when it has no faithful text form."""
    text: str | None = None
    if isinstance(value, str):
        text = value
    elif isinstance(value, bytes):
        with contextlib.suppress(UnicodeDecodeError):
            text = value.decode()
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float | decimal.Decimal):
        text = str(value)
    elif isinstance(value, datetime.datetime):
        text = value.isoformat()
    return text


def _text_headers(headers: Mapping[str, object]) -> dict[str, str]:
    """Application and txmq headers as text; raise :class:`MessageDecodeError` if impossible."""
    result: dict[str, str] = {}
    for name, value in headers.items():
        if _is_broker_header(name):
            continue
        text = _header_text(value)
        if text is None:
            raise MessageDecodeError(f"header {name!r} holds a {type(value).__name__}, not text")
        result[name] = text
    return result


def raw_headers(headers: Mapping[str, object] | None) -> dict[str, str]:
    """Every header as text, best effort, for inspecting a message that did not decode."""
    result: dict[str, str] = {}
    for name, value in (headers or {}).items():
        text = _header_text(value)
        result[str(name)] = text if text is not None else repr(value)
    return result


def decode_message(
    body: bytes,
    message_id: str | None,
    headers: Mapping[str, object] | None,
    routing_key: str,
) -> Message:
    """The message an AMQP delivery carries.

    Raises:
        MessageDecodeError: no id, a header without a text form, or fields that do not make
            a valid message (e.g. a bad topic).
    """
    return message_from_wire(
        body=body, headers=_text_headers(headers or {}), topic=routing_key, message_id=message_id
    )


def decode_delivery(
    *,
    source: str,
    token: object,
    redelivered: bool,
    body: bytes,
    message_id: str | None,
    headers: Mapping[str, object] | None,
    routing_key: str,
) -> Delivery:
    """A :class:`~txmq.wire.Delivery`; one that cannot be decoded carries the error and raw
    data instead."""
    return decode_or_raw(
        lambda: decode_message(body, message_id, headers, routing_key),
        source=source,
        token=token,
        redelivered=redelivered,
        raw_body=body,
        raw_headers=lambda: raw_headers(headers),
    )


def decode_frame(source: str, token: object, method: Any, properties: Any, body: bytes) -> Delivery:
    """:func:`decode_delivery` of what pika hands over (``Basic.Deliver`` or ``Basic.GetOk``,
    ``BasicProperties``, body)."""
    return decode_delivery(
        source=source,
        token=token,
        redelivered=bool(method.redelivered),
        body=body,
        message_id=properties.message_id,
        headers=properties.headers,
        routing_key=method.routing_key,
    )


def settlement_plan(outstanding: Iterable[int], tags: Iterable[int]) -> list[tuple[int, bool]]:
    """How to settle ``tags`` in as few frames as possible: ``[(delivery_tag, multiple)]``.

    ``outstanding`` is every unsettled delivery tag of the channel, oldest first. An AMQP
    ``multiple`` settlement covers every outstanding tag up to the one given, so it is only
    usable for the part of ``tags`` that is exactly the oldest outstanding tags; the rest
    is settled one by one.

    Example:
        >>> settlement_plan([1, 2, 3, 5], [1, 2, 5])
        [(2, True), (5, False)]
    """
    wanted: Sequence[int] = sorted(set(tags))
    prefix = 0
    for held, tag in zip(outstanding, wanted, strict=False):
        if held != tag:
            break
        prefix += 1
    plan: list[tuple[int, bool]] = []
    if prefix >= 2:
        plan.append((wanted[prefix - 1], True))
    else:
        prefix = 0
    plan.extend((tag, False) for tag in wanted[prefix:])
    return plan
