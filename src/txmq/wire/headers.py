"""Header names and values the consumer side adds to messages.

The ones shared with the producer side live in :mod:`txmq.message`; these are the
consumer's own: the replay generation and what dead-lettering and compensation record.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from txmq.config import redact
from txmq.message import HEADER_ATTEMPT, Message

#: Replay generation: 0 (absent) for the original message, ``n`` after the n-th DLQ replay.
HEADER_REPLAY = "x-txmq-replay"
#: The consumer group that dead-lettered the message.
HEADER_GROUP = "x-txmq-group"
#: On a DLQ message: the id of the compensation event sent for it (replaying it would
#: apply a message whose effect was already undone, so replay refuses unless forced).
HEADER_COMPENSATION_ID = "x-txmq-compensation-id"
#: On a compensation event: the id of the message it compensates.
HEADER_COMPENSATES = "x-txmq-compensates"
#: On a dead-lettered undecodable message: ``"1"`` (its id is new; its body and headers
#: are what arrived).
HEADER_RAW = "x-txmq-raw"
#: On a replayed message: the only consumer group that may process it. On Kafka a replay
#: goes back into the shared topic; other groups acknowledge it without processing.
HEADER_TARGET_GROUP = "x-txmq-target-group"

ERROR_MESSAGE_LIMIT = 500
ERROR_TYPE_LIMIT = 200


def attempt_of(message: Message) -> int:
    """1 for a first delivery, ``n`` for the n-th attempt (``x-txmq-attempt``).

    Example:
        >>> attempt_of(Message("t", b"", headers={"x-txmq-attempt": "3"}))
        3
    """
    return parse_attempt(message.headers)


def parse_attempt(headers: Mapping[str, str]) -> int:
    try:
        return max(1, int(headers.get(HEADER_ATTEMPT, "1")))
    except ValueError:
        return 1


def replay_generation(headers: Mapping[str, str]) -> int:
    try:
        return max(0, int(headers.get(HEADER_REPLAY, "0")))
    except ValueError:
        return 0


def inbox_key(message: Message) -> str:
    """The inbox key of a message: its id, or ``id#replay-n`` for the n-th replay.

    A replayed message keeps its id (so it can be traced) but must not be swallowed by the
    inbox as a duplicate of the failed original; each replay generation gets its own key,
    and a duplicate of the same replay is still deduplicated.
    """
    generation = replay_generation(message.headers)
    return message.id if generation == 0 else f"{message.id}#replay-{generation}"


def error_type(exc: BaseException) -> str:
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return name[:ERROR_TYPE_LIMIT]


def error_text(exc: BaseException) -> str:
    """The exception's text, redacted (URL passwords, SASL secrets) and truncated."""
    text = redact(str(exc)) or type(exc).__name__
    if len(text) > ERROR_MESSAGE_LIMIT:
        text = text[: ERROR_MESSAGE_LIMIT - 3] + "..."
    return text


def timestamp(now: float | None = None) -> str:
    """Epoch seconds as header text (millisecond precision)."""
    return f"{time.time() if now is None else now:.3f}"


def parse_timestamp(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
