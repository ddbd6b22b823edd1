"""txmq messages as Kafka records, and back.

Nothing here talks to a broker, so it is tested without one.

The wire format is :mod:`txmq.wire.codec`'s; in a Kafka record the value is the message
body, the key is the message key in UTF-8 (none without a key), and the headers are the
wire headers as UTF-8 bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from txmq.errors import MessageDecodeError
from txmq.message import Message
from txmq.wire import (
    HEADER_ID,
    HEADER_KEY,
    HEADER_TOPIC,
    STRUCTURAL_HEADERS,
    Delivery,
    decode_or_raw,
    message_from_wire,
)

#: Record headers as confluent-kafka takes and hands them over; a value may be ``None``.
HeaderValue = str | bytes | None
RecordHeaders = Mapping[str, HeaderValue] | Sequence[tuple[str, HeaderValue]]


def encode_headers(message: Message) -> list[tuple[str, HeaderValue]]:
    """The record headers carrying ``message``: :func:`~txmq.wire.wire_headers` as UTF-8.

    Built in one pass rather than by encoding ``wire_headers(message)``: this is the relay's
    hot path, and the intermediate dict cost a microsecond a message (a unit test keeps the
    two equal).
    """
    headers: list[tuple[str, HeaderValue]] = [
        (name, value.encode())
        for name, value in message.headers.items()
        if name not in STRUCTURAL_HEADERS
    ]
    headers.append((HEADER_ID, message.id.encode()))
    headers.append((HEADER_TOPIC, message.topic.encode()))
    if message.key is not None:
        headers.append((HEADER_KEY, message.key.encode()))
    return headers


def encode_key(message: Message) -> bytes | None:
    """The record key: Kafka partitions by it, which keeps per-key order."""
    return None if message.key is None else message.key.encode()


def _header_texts(headers: RecordHeaders | None) -> tuple[dict[str, str], list[str]]:
    """Every header as text (undecodable bytes replaced), and the names that were not UTF-8."""
    texts: dict[str, str] = {}
    not_utf8: list[str] = []
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, value in pairs:
        if value is None:
            texts[name] = ""
        elif isinstance(value, str):
            texts[name] = value
        else:
            try:
                texts[name] = value.decode()
            except UnicodeDecodeError:
                not_utf8.append(name)
                texts[name] = value.decode(errors="replace")
    return texts, not_utf8


def _record_key(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        raise MessageDecodeError("the record key is not UTF-8 text") from None


def decode_message(
    source: str, key: bytes | None, value: bytes | None, headers: RecordHeaders | None
) -> Message:
    """The message a record of Kafka topic ``source`` carries.

    Raises:
        MessageDecodeError: no ``x-txmq-id``, a header or key that is not UTF-8, or fields
            that do not make a valid message (e.g. a bad topic).
    """
    texts, not_utf8 = _header_texts(headers)
    if not_utf8:
        raise MessageDecodeError(f"header(s) {sorted(not_utf8)} are not UTF-8 text")
    return message_from_wire(body=value or b"", headers=texts, topic=source, key=_record_key(key))


def decode_record(
    *,
    source: str,
    key: bytes | None,
    value: bytes | None,
    headers: RecordHeaders | None,
    token: object,
    redelivered: bool,
) -> Delivery:
    """A :class:`~txmq.wire.Delivery`; a record that does not decode carries the error and
    raw data."""
    return decode_or_raw(
        lambda: decode_message(source, key, value, headers),
        source=source,
        token=token,
        redelivered=redelivered,
        raw_body=value or b"",
        raw_headers=lambda: _header_texts(headers)[0],
    )
