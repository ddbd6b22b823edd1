"""The copies of a message txmq sends on: retry, dead-letter, raw dead-letter, replay, and
the headers of a compensation event.

Pure functions: they build messages and never talk to a broker. A copy keeps the message's
id, topic, key and body; only ``x-txmq-`` headers change.
"""

from __future__ import annotations

from collections.abc import Mapping

from txmq.message import HEADER_PREFIX, Message
from txmq.wire.headers import (
    HEADER_ATTEMPT,
    HEADER_COMPENSATES,
    HEADER_COMPENSATION_ID,
    HEADER_DUE_AT,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_FIRST_FAILURE,
    HEADER_GROUP,
    HEADER_ID,
    HEADER_KEY,
    HEADER_LAST_FAILURE,
    HEADER_ORIGINAL_TOPIC,
    HEADER_RAW,
    HEADER_RAW_ID,
    HEADER_RAW_KEY,
    HEADER_RAW_TOPIC,
    HEADER_REPLAY,
    HEADER_TOPIC,
    replay_generation,
    timestamp,
)

#: Headers describing a failure; dropped when a message is replayed.
FAILURE_HEADERS = (
    HEADER_DUE_AT,
    HEADER_ERROR_TYPE,
    HEADER_ERROR_MESSAGE,
    HEADER_FIRST_FAILURE,
    HEADER_LAST_FAILURE,
    HEADER_GROUP,
    HEADER_COMPENSATION_ID,
)


def _failure_headers(
    message: Message, error_type: str, error_message: str, attempt: int, now: float
) -> dict[str, str]:
    return {
        HEADER_ATTEMPT: str(attempt),
        HEADER_TOPIC: message.topic,
        HEADER_ERROR_TYPE: error_type,
        HEADER_ERROR_MESSAGE: error_message,
        HEADER_FIRST_FAILURE: message.headers.get(HEADER_FIRST_FAILURE, timestamp(now)),
        HEADER_LAST_FAILURE: timestamp(now),
    }


def retry_copy(
    message: Message,
    *,
    error_type: str,
    error_message: str,
    attempt: int,
    delay: float,
    now: float,
) -> Message:
    """The copy of failed ``attempt`` that comes back as attempt ``attempt + 1`` after ``delay``."""
    headers = dict(message.headers)
    headers.update(_failure_headers(message, error_type, error_message, attempt + 1, now))
    headers[HEADER_DUE_AT] = timestamp(now + delay)
    return Message(message.topic, message.body, key=message.key, headers=headers, id=message.id)


def dead_letter_copy(
    message: Message,
    *,
    group: str,
    error_type: str,
    error_message: str,
    attempt: int,
    now: float,
    compensation_id: str | None = None,
) -> Message:
    """The copy parked in the group's DLQ after ``attempt`` failed for good."""
    headers = {k: v for k, v in message.headers.items() if k != HEADER_DUE_AT}
    headers.update(_failure_headers(message, error_type, error_message, attempt, now))
    headers[HEADER_GROUP] = group
    if compensation_id is not None:
        headers[HEADER_COMPENSATION_ID] = compensation_id
    return Message(message.topic, message.body, key=message.key, headers=headers, id=message.id)


#: Transport headers of an undecodable message are kept under ``x-txmq-raw-...`` so the
#: adapter's own (id, key, topic of the new message) cannot clash with them.
_RENAMED_ON_RAW = {
    HEADER_ID: HEADER_RAW_ID,
    HEADER_KEY: HEADER_RAW_KEY,
    HEADER_TOPIC: HEADER_RAW_TOPIC,
}


def raw_dead_letter(
    *,
    topic: str,
    group: str,
    body: bytes,
    headers: Mapping[str, str],
    reason: str,
    error_type: str,
    now: float,
) -> Message:
    """Wrap an undecodable message (fresh id) to park it in the DLQ with what arrived.

    The body is kept byte for byte; the headers as they came, except ``x-txmq-id``,
    ``x-txmq-key`` and ``x-txmq-topic``, which are kept as ``x-txmq-raw-id`` etc.
    """
    kept = {_RENAMED_ON_RAW.get(k, k): v for k, v in headers.items()}
    probe = Message(topic, body)
    kept.update(_failure_headers(probe, error_type, reason, 1, now))
    kept[HEADER_GROUP] = group
    kept[HEADER_RAW] = "1"
    return Message(topic, body, headers=kept, id=probe.id)


def replay_copy(message: Message) -> Message:
    """The copy of a DLQ message sent back to its group: attempt 1, next replay generation.

    The new generation gives it a new inbox key, so the group's inbox does not swallow it
    as a duplicate; a duplicate of this same replay is still deduplicated.
    """
    headers = {k: v for k, v in message.headers.items() if k not in FAILURE_HEADERS}
    headers[HEADER_ATTEMPT] = "1"
    headers[HEADER_REPLAY] = str(replay_generation(message.headers) + 1)
    return Message(message.topic, message.body, key=message.key, headers=headers, id=message.id)


def compensation_headers(
    message: Message, *, group: str, error_type: str, error_message: str
) -> dict[str, str]:
    """The headers of the compensation event for ``message``, which ``group`` gave up on.

    The event carries the message's application headers (none of its ``x-txmq-`` ones) and
    says which message it compensates, its topic, the group and the final error.
    """
    headers = {k: v for k, v in message.headers.items() if not k.startswith(HEADER_PREFIX)}
    headers.update(
        {
            HEADER_COMPENSATES: message.id,
            HEADER_ORIGINAL_TOPIC: message.topic,
            HEADER_GROUP: group,
            HEADER_ERROR_TYPE: error_type,
            HEADER_ERROR_MESSAGE: error_message,
        }
    )
    return headers
