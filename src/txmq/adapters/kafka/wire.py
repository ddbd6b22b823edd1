"""txmq messages as Kafka records, and back.

Nothing here talks to a broker, so it is tested without one.

Wire format (same meaning as the RabbitMQ adapter's): the record value is the message body,
the record key is the message key in UTF-8 (none without a key), and the record headers are
the message headers plus ``x-txmq-id``, ``x-txmq-topic`` (the logical topic, which differs
from the Kafka topic on retry and dead-letter topics) and ``x-txmq-key`` when there is a key.
Decoding takes those three back into :class:`~txmq.message.Message` fields, so a decoded
message equals the one that was published.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from txmq.adapters.base import Delivery
from txmq.errors import InvalidMessage, MessageDecodeError
from txmq.message import HEADER_ID, HEADER_KEY, HEADER_TOPIC, Message

#: Record headers as confluent-kafka takes and hands them over; a value may be ``None``.
HeaderValue = str | bytes | None
RecordHeaders = Mapping[str, HeaderValue] | Sequence[tuple[str, HeaderValue]]

_STRUCTURAL_HEADERS = frozenset({HEADER_ID, HEADER_KEY, HEADER_TOPIC})


def encode_headers(message: Message) -> list[tuple[str, HeaderValue]]:
    """The record headers carrying ``message``."""
    headers: list[tuple[str, HeaderValue]] = [
        (name, value.encode())
        for name, value in message.headers.items()
        if name not in _STRUCTURAL_HEADERS
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
    message_id = texts.get(HEADER_ID)
    if not message_id:
        raise MessageDecodeError(f"no {HEADER_ID} header: not a txmq message")
    message_key = texts.get(HEADER_KEY)
    if message_key is None and key:
        try:
            message_key = key.decode()
        except UnicodeDecodeError:
            raise MessageDecodeError("the record key is not UTF-8 text") from None
    try:
        return Message(
            texts.get(HEADER_TOPIC) or source,
            value or b"",
            key=message_key or None,
            headers={k: v for k, v in texts.items() if k not in _STRUCTURAL_HEADERS},
            id=message_id,
        )
    except InvalidMessage as exc:
        raise MessageDecodeError(f"not a valid txmq message: {exc}") from exc


def decode_record(
    *,
    source: str,
    key: bytes | None,
    value: bytes | None,
    headers: RecordHeaders | None,
    token: object,
    redelivered: bool,
) -> Delivery:
    """A :class:`Delivery`; a record that does not decode carries the error and raw data."""
    try:
        message = decode_message(source, key, value, headers)
    except MessageDecodeError as exc:
        return Delivery(
            message=None,
            source=source,
            redelivered=redelivered,
            token=token,
            decode_error=exc,
            raw_body=value or b"",
            raw_headers=_header_texts(headers)[0],
        )
    return Delivery(message=message, source=source, redelivered=redelivered, token=token)
