"""The wire format: one home for what travels with a message, on every broker.

* :mod:`txmq.wire.headers`: every ``x-txmq-`` header (who writes it, who reads it) and
  how its value is read (attempt, replay generation, inbox key, timestamps, errors);
* :mod:`txmq.wire.codec`: a :class:`~txmq.message.Message` as body and text headers, and back;
* :mod:`txmq.wire.delivery`: :class:`Delivery` and "decode, or make a raw delivery";
* :mod:`txmq.wire.copies`: the copies txmq sends on (retry, dead-letter, raw dead-letter,
  replay) and a compensation event's headers.

Each adapter's own ``wire`` module adds only its broker's encoding on top.
"""

from __future__ import annotations

from txmq.message import HEADER_PREFIX
from txmq.wire.codec import STRUCTURAL_HEADERS, message_from_wire, wire_headers
from txmq.wire.copies import (
    FAILURE_HEADERS,
    compensation_headers,
    dead_letter_copy,
    raw_dead_letter,
    replay_copy,
    retry_copy,
)
from txmq.wire.delivery import Delivery, decode_or_raw
from txmq.wire.headers import (
    ERROR_MESSAGE_LIMIT,
    ERROR_TYPE_LIMIT,
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
    HEADER_PRODUCER_GROUP,
    HEADER_RAW,
    HEADER_RAW_ID,
    HEADER_RAW_KEY,
    HEADER_RAW_TOPIC,
    HEADER_REPLAY,
    HEADER_SAGA_ID,
    HEADER_SAGA_NAME,
    HEADER_SAGA_OP,
    HEADER_SAGA_OUTCOME,
    HEADER_SAGA_REPLY_TO,
    HEADER_SAGA_STEP,
    HEADER_SETTLES,
    HEADER_TARGET_GROUP,
    HEADER_TOPIC,
    attempt_of,
    error_text,
    error_type,
    inbox_key,
    parse_attempt,
    parse_timestamp,
    replay_generation,
    timestamp,
)

__all__ = [
    "ERROR_MESSAGE_LIMIT",
    "ERROR_TYPE_LIMIT",
    "FAILURE_HEADERS",
    "HEADER_ATTEMPT",
    "HEADER_COMPENSATES",
    "HEADER_COMPENSATION_ID",
    "HEADER_DUE_AT",
    "HEADER_ERROR_MESSAGE",
    "HEADER_ERROR_TYPE",
    "HEADER_FIRST_FAILURE",
    "HEADER_GROUP",
    "HEADER_ID",
    "HEADER_KEY",
    "HEADER_LAST_FAILURE",
    "HEADER_ORIGINAL_TOPIC",
    "HEADER_PREFIX",
    "HEADER_PRODUCER_GROUP",
    "HEADER_RAW",
    "HEADER_RAW_ID",
    "HEADER_RAW_KEY",
    "HEADER_RAW_TOPIC",
    "HEADER_REPLAY",
    "HEADER_SAGA_ID",
    "HEADER_SAGA_NAME",
    "HEADER_SAGA_OP",
    "HEADER_SAGA_OUTCOME",
    "HEADER_SAGA_REPLY_TO",
    "HEADER_SAGA_STEP",
    "HEADER_SETTLES",
    "HEADER_TARGET_GROUP",
    "HEADER_TOPIC",
    "STRUCTURAL_HEADERS",
    "Delivery",
    "attempt_of",
    "compensation_headers",
    "dead_letter_copy",
    "decode_or_raw",
    "error_text",
    "error_type",
    "inbox_key",
    "message_from_wire",
    "parse_attempt",
    "parse_timestamp",
    "raw_dead_letter",
    "replay_copy",
    "replay_generation",
    "retry_copy",
    "timestamp",
    "wire_headers",
]
