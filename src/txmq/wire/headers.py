"""Every ``x-txmq-`` header txmq puts on a message, and how their values are read.

Each name says who writes it and who reads it. Values are text (headers are ``str -> str``);
the parsers here never raise: a value that does not parse reads as the header's default,
because a stray header must not stop a message from being processed or listed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from txmq.config import redact
from txmq.message import Message

# -- the message itself, on every publish ------------------------------------------------

#: The message id. Written by every adapter's encoding (RabbitMQ also sets the AMQP
#: ``message_id`` property); read by decoding.
HEADER_ID = "x-txmq-id"
#: The logical topic, which differs from the physical queue or topic on retry stages and
#: DLQs. Written by encoding (and again on retry and dead-letter copies); read by decoding
#: and, as a fallback, by :class:`~txmq.consumer.Compensation`.
HEADER_TOPIC = "x-txmq-topic"
#: The ordering key, when there is one. Written by encoding; read by decoding (Kafka also
#: has it as the record key).
HEADER_KEY = "x-txmq-key"
#: The producer group that sent the message. Written by the :class:`~txmq.Producer` on every
#: message it stages or sends; read when a message fails for good, to address the
#: compensation event.
HEADER_PRODUCER_GROUP = "x-txmq-producer-group"

# -- retries and dead-lettering (written by the consumer) --------------------------------

#: The attempt number, ``"1"`` for a first delivery. Written by the consumer (``"1"`` when
#: absent), by retry copies (the next attempt), dead-letter copies (the last attempt) and
#: replays (``"1"`` again); read by :func:`attempt_of`, ``Delivery.attempt`` and
#: ``DeadLetter.attempts``.
HEADER_ATTEMPT = "x-txmq-attempt"
#: When a retry copy is due (epoch seconds). Written by retry copies; read where retry
#: delays are kept by due time (Kafka's retry topics); dropped from dead-letter copies.
HEADER_DUE_AT = "x-txmq-due-at"
#: The last error's type and text (truncated, redacted). Written by retry and dead-letter
#: copies, raw dead letters and compensation events; read by ``DeadLetter`` and
#: ``Compensation``.
HEADER_ERROR_TYPE = "x-txmq-error-type"
HEADER_ERROR_MESSAGE = "x-txmq-error-message"
#: When the first and the last attempt failed (epoch seconds). Written by retry and
#: dead-letter copies; read by ``DeadLetter``.
HEADER_FIRST_FAILURE = "x-txmq-first-failure-at"
HEADER_LAST_FAILURE = "x-txmq-last-failure-at"
#: The consumer group that gave up on the message. Written by dead-letter copies, raw dead
#: letters and compensation events; read by ``Compensation.consumer_group``.
HEADER_GROUP = "x-txmq-group"
#: On a dead letter whose failure sent a compensation event: that event's id. Written by
#: dead-letter copies; read by ``DeadLetters.replay``, which refuses to replay a message
#: whose effect was already undone unless forced.
HEADER_COMPENSATION_ID = "x-txmq-compensation-id"
#: ``"1"`` on a dead letter that did not decode (its id is new; its body and headers are
#: what arrived). Written by raw dead letters; read by ``DeadLetter.raw``.
HEADER_RAW = "x-txmq-raw"
#: On a raw dead letter: the ``x-txmq-id``, ``-key`` and ``-topic`` that arrived, kept
#: under these names so that the dead letter's own id, key and topic cannot clash with them.
HEADER_RAW_ID = "x-txmq-raw-id"
HEADER_RAW_KEY = "x-txmq-raw-key"
HEADER_RAW_TOPIC = "x-txmq-raw-topic"

# -- replays (written by DeadLetters.replay) ---------------------------------------------

#: Replay generation: absent (0) on the original message, ``n`` after the n-th replay.
#: Written by replay copies; read by :func:`inbox_key` and ``DeadLetter.replay_generation``.
HEADER_REPLAY = "x-txmq-replay"
#: The only consumer group that may process a replay. Written by ``DeadLetters.replay``;
#: read by the consumer, which acknowledges another group's replay without processing it
#: (on Kafka a replay goes back into the topic every group reads).
HEADER_TARGET_GROUP = "x-txmq-target-group"

# -- compensation events (written by the consumer that gave up) --------------------------

#: The id of the message a compensation event compensates. Read by ``Compensation``.
HEADER_COMPENSATES = "x-txmq-compensates"
#: The compensated message's topic (``x-txmq-topic`` names the event's own topic). Read by
#: ``Compensation``.
HEADER_ORIGINAL_TOPIC = "x-txmq-original-topic"

# -- sagas (written by txmq.saga's orchestrator, participants and choreography) ----------

#: The saga instance a command, reply or choreography event belongs to. Written by the
#: orchestrator on commands, by participants on replies and by choreography steps on the
#: events they stage; read by participants (their barrier), the orchestrator and the tracker.
HEADER_SAGA_ID = "x-txmq-saga-id"
#: The saga's name (its definition). Written with ``x-txmq-saga-id``; read by the tracker.
HEADER_SAGA_NAME = "x-txmq-saga-name"
#: The step a command or reply is about (the barrier's branch). Written by the orchestrator
#: and echoed by participants; read by both.
HEADER_SAGA_STEP = "x-txmq-saga-step"
#: ``action`` or ``compensation``. Written by the orchestrator; echoed on replies.
HEADER_SAGA_OP = "x-txmq-saga-op"
#: The topic a participant replies to. Written by the orchestrator; read by participants.
HEADER_SAGA_REPLY_TO = "x-txmq-saga-reply-to"
#: ``success`` or ``failure``. Written by participants on replies; read by the orchestrator.
HEADER_SAGA_OUTCOME = "x-txmq-saga-outcome"

# -- broker-specific ---------------------------------------------------------------------

#: On a Kafka DLQ settlement marker: the offset (decimal) of the letter it settles. Written
#: and read by the Kafka DLQ browser only.
HEADER_SETTLES = "x-txmq-settles"

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
    """The attempt number in ``headers``: 1 when absent or not a positive number."""
    try:
        return max(1, int(headers.get(HEADER_ATTEMPT, "1")))
    except ValueError:
        return 1


def replay_generation(headers: Mapping[str, str]) -> int:
    """How often the message in ``headers`` was replayed: 0 when absent or not a number."""
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
    """The exception's class as it travels: ``ValueError``, ``package.module.Error``."""
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
    """Epoch seconds from header text; ``None`` when absent or not a number."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
