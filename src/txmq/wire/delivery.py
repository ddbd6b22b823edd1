"""What a subscription hands over: a decoded message, or what arrived when it did not decode.

Every adapter builds its deliveries with :func:`decode_or_raw`, so an undecodable message
looks the same on every broker: no ``message``, the ``decode_error``, and the body and
headers as they came, which the consumer parks in the DLQ as a raw dead letter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from txmq.errors import MessageDecodeError
from txmq.message import Message
from txmq.wire.headers import parse_attempt


@dataclass(slots=True, eq=False)
class Delivery:
    """One message received from a :class:`~txmq.adapters.base.Subscription`, not yet settled.

    Attributes:
        message: the decoded message, or ``None`` when it could not be decoded
            (``decode_error`` then says why, ``raw_body`` / ``raw_headers`` hold what came).
        source: the physical queue or topic it was read from (work, retry or DLQ).
        redelivered: the broker says it may have been delivered before.
        token: adapter-private handle used to ack it (delivery tag, partition and offset).
    """

    message: Message | None
    source: str
    redelivered: bool
    token: Any
    decode_error: Exception | None = None
    raw_body: bytes = b""
    raw_headers: dict[str, str] = field(default_factory=dict)

    @property
    def attempt(self) -> int:
        """1 for a first delivery; ``n`` for the n-th attempt (from ``x-txmq-attempt``)."""
        return parse_attempt(self.message.headers if self.message is not None else self.raw_headers)


def decode_or_raw(
    decode: Callable[[], Message],
    *,
    source: str,
    token: object,
    redelivered: bool,
    raw_body: bytes,
    raw_headers: Callable[[], dict[str, str]],
) -> Delivery:
    """The delivery of the message ``decode()`` returns; if it raises
    :class:`~txmq.errors.MessageDecodeError`, a delivery without a message that carries the
    error, ``raw_body`` and ``raw_headers()`` (every header as text, best effort; asked
    only then).

    Example:
        >>> d = decode_or_raw(lambda: Message("t", b"x"), source="g.t", token=1,
        ...                   redelivered=False, raw_body=b"x", raw_headers=dict)
        >>> d.message is not None, d.attempt
        (True, 1)
    """
    try:
        message = decode()
    except MessageDecodeError as exc:
        return Delivery(
            message=None,
            source=source,
            redelivered=redelivered,
            token=token,
            decode_error=exc,
            raw_body=raw_body,
            raw_headers=raw_headers(),
        )
    return Delivery(message=message, source=source, redelivered=redelivered, token=token)
