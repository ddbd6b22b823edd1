"""The message txmq moves, and its id.

A :class:`Message` is immutable. Its ``id`` is a UUIDv7 in text form, assigned once when the
message is created and kept across redeliveries, retries, dead-lettering and re-publishes;
consumers deduplicate on it.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from txmq.errors import InvalidMessage, MessageTooLarge

#: Header names starting with this prefix are txmq's own transport metadata (each one is
#: in :mod:`txmq.wire.headers`); the rest are the application's.
HEADER_PREFIX = "x-txmq-"

#: Topics and group names: safe as RabbitMQ routing keys/queue names and Kafka topic names.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
NAME_MAX_LENGTH = 120
KEY_MAX_LENGTH = 255
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


def validate_name(value: object, what: str) -> str:
    """Return ``value`` if it is a valid topic or group name, else raise :class:`InvalidMessage`."""
    if not isinstance(value, str):
        raise InvalidMessage(f"{what} must be a str, not {type(value).__name__}")
    if len(value) > NAME_MAX_LENGTH or not NAME_PATTERN.match(value):
        raise InvalidMessage(
            f"invalid {what} {value[:NAME_MAX_LENGTH]!r}: use 1-{NAME_MAX_LENGTH} characters "
            "from A-Z a-z 0-9 _ - and single dots between words"
        )
    return value


_uuid7_lock = threading.Lock()
_uuid7_last = 0


def new_message_id() -> str:
    """Return a new UUIDv7 (RFC 9562) as text, monotonic within this process.

    The 48-bit millisecond timestamp is followed by a 74-bit counter-and-random field; ids
    created in the same millisecond increase, so sorting ids sorts by creation time.
    """
    global _uuid7_last  # noqa: PLW0603 - one process-wide monotonic clock
    with _uuid7_lock:
        candidate = (time.time_ns() // 1_000_000) << 74 | int.from_bytes(os.urandom(10)) >> 6
        # Within one millisecond, step past the last id instead of drawing a smaller one.
        value = max(candidate, _uuid7_last + 1)
        _uuid7_last = value
    ms, rest = value >> 74, value & ((1 << 74) - 1)
    rand_a, rand_b = rest >> 62, rest & ((1 << 62) - 1)
    as_int = ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=as_int))


@dataclass(frozen=True, slots=True)
class Message:
    """One message: where it goes, what it carries, and the id that identifies it forever.

    Args:
        topic: logical destination (RabbitMQ routing key, Kafka topic).
        body: the payload; ``bytes`` only: encode text or JSON yourself.
        key: ordering key; messages with the same key keep their order (Kafka key).
        headers: application headers, ``str -> str``; names starting with ``x-txmq-`` are
            reserved for txmq's transport metadata.
        id: the message id; a new UUIDv7 when omitted.

    Raises:
        InvalidMessage: on a bad topic, key, body type or header.

    Example:
        >>> m = Message("orders.created", b'{"order": 1}', key="customer-7")
    """

    topic: str
    body: bytes
    key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    id: str = field(default_factory=new_message_id)

    def __post_init__(self) -> None:
        _check_fields(self.topic, self.body, self.key, self.id)
        headers = dict(self.headers)
        _check_headers(headers)
        object.__setattr__(self, "headers", MappingProxyType(headers))

    def with_headers(self, **extra: str) -> Message:
        """Return a copy with ``extra`` headers merged in (same id).

        Raises:
            InvalidMessage: a value in ``extra`` is not a ``str``.
        """
        # Only what is new needs checking: the rest was checked when this one was built.
        if not all(isinstance(value, str) for value in extra.values()):
            raise InvalidMessage("headers must map str to str")
        headers = self.headers  # read-only (a MappingProxyType) once the message is built
        merged = headers | extra if isinstance(headers, MappingProxyType) else {**headers, **extra}
        return restore_message(
            topic=self.topic, body=self.body, key=self.key, headers=merged, id=self.id
        )

    def application_headers(self) -> dict[str, str]:
        """The headers without txmq's own ``x-txmq-`` ones."""
        return {k: v for k, v in self.headers.items() if not k.startswith(HEADER_PREFIX)}

    def size(self) -> int:
        """Approximate size on the wire: body plus header names and values."""
        headers = self.headers
        return len(self.body) + sum(map(len, headers)) + sum(map(len, headers.values()))

    def check_size(self, limit: int) -> None:
        """Raise :class:`MessageTooLarge` if :meth:`size` exceeds ``limit`` bytes."""
        if self.size() > limit:
            raise MessageTooLarge(
                f"message {self.id} on {self.topic!r} is {self.size()} bytes; the limit is {limit}"
            )

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, id={self.id!r}, key={self.key!r}, "
            f"body=<{len(self.body)} bytes>)"
        )


def _check_fields(topic: object, body: object, key: object, message_id: object) -> None:
    validate_name(topic, "topic")
    if not isinstance(body, bytes):
        raise InvalidMessage(f"body must be bytes, not {type(body).__name__}; encode it first")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= KEY_MAX_LENGTH):
        raise InvalidMessage(f"key must be a non-empty str of at most {KEY_MAX_LENGTH} chars")
    if not isinstance(message_id, str) or not 0 < len(message_id) <= 64:
        raise InvalidMessage("id must be a non-empty str of at most 64 characters")


def _check_headers(headers: Mapping[Any, Any]) -> None:
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidMessage("headers must map str to str")


def build_message(
    *, topic: str, body: bytes, key: str | None, headers: dict[str, str], id: str
) -> Message:
    """A :class:`Message` checked as its constructor checks it, from a ``headers`` dict the
    caller hands over (wrapped, not copied): the consumer's decoding path.

    Raises:
        InvalidMessage: as :class:`Message` does.
    """
    _check_fields(topic, body, key, id)
    _check_headers(headers)
    return restore_message(topic=topic, body=body, key=key, headers=headers, id=id)


def restore_message(
    *,
    topic: str,
    body: bytes,
    key: str | None,
    headers: dict[str, str] | MappingProxyType[str, str],
    id: str,
) -> Message:
    """Rebuild a message that was validated when it was made (read back from txmq's own
    tables) without validating it again: the relay's hot path.

    Read-only ``headers`` (a ``MappingProxyType``) are used as they are, so messages of a
    batch may share them; a dict is wrapped, not copied (the caller hands it over). Never
    use it for input from outside txmq: build a :class:`Message`, which validates.
    """
    message = object.__new__(Message)
    set_field = object.__setattr__
    set_field(message, "topic", topic)
    set_field(message, "body", body)
    set_field(message, "key", key)
    if not isinstance(headers, MappingProxyType):
        headers = MappingProxyType(headers)
    set_field(message, "headers", headers)
    set_field(message, "id", id)
    return message
