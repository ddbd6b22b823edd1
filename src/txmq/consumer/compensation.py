"""Compensation events: telling the producer group that its message failed for good.

Convention: a message published with header ``x-txmq-producer-group: P`` that fails for
good in a consumer with compensation enabled produces a compensation event on topic
``P.compensation``. The event's id is a UUIDv5 of the original id, so however often it is
sent (crash, redelivery, a second failing consumer group) the producer's compensation
handler, which is inbox-protected like any handler, runs once per original message.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from txmq.message import Message
from txmq.wire import (
    HEADER_COMPENSATES,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_GROUP,
    HEADER_ORIGINAL_TOPIC,
    HEADER_PRODUCER_GROUP,
    HEADER_TOPIC,
    compensation_headers,
)

COMPENSATION_SUFFIX = "compensation"
#: Namespace of compensation ids; fixed forever (changing it would break deduplication).
COMPENSATION_NAMESPACE = uuid.UUID("6f1c9a52-8d0e-4b7a-9c51-2b3f7e0d4a11")


def compensation_topic(producer_group: str) -> str:
    """The topic a producer group's compensation events are published on."""
    return f"{producer_group}.{COMPENSATION_SUFFIX}"


def compensation_id(message_id: str) -> str:
    """The deterministic id of the compensation event for message ``message_id``."""
    return str(uuid.uuid5(COMPENSATION_NAMESPACE, message_id))


def compensation_event(
    message: Message, group: str, error_type: str, error_message: str
) -> Message | None:
    """The compensation event for ``message``; None if it names no producer group."""
    producer_group = message.headers.get(HEADER_PRODUCER_GROUP)
    if not producer_group:
        return None
    return Message(
        compensation_topic(producer_group),
        message.body,
        key=message.key,
        headers=compensation_headers(
            message, group=group, error_type=error_type, error_message=error_message
        ),
        id=compensation_id(message.id),
    )


@dataclass(frozen=True, slots=True)
class Compensation:
    """What a compensation handler receives: the failed message and why it failed.

    Attributes:
        id: the compensation event's own id (deterministic).
        original_id: id of the message that failed for good.
        original_topic: its topic.
        body: its body.
        key: its ordering key.
        headers: its application headers (no ``x-txmq-`` ones).
        consumer_group: the consumer group that gave up on it.
        error_type: the final error's type, e.g. ``"ValueError"``.
        error_message: the final error's text (truncated, redacted).
    """

    id: str
    original_id: str
    original_topic: str
    body: bytes
    key: str | None
    headers: Mapping[str, str]
    consumer_group: str
    error_type: str
    error_message: str

    @classmethod
    def from_message(cls, event: Message) -> Compensation:
        h = event.headers
        return cls(
            id=event.id,
            original_id=h.get(HEADER_COMPENSATES, ""),
            original_topic=h.get(HEADER_ORIGINAL_TOPIC, h.get(HEADER_TOPIC, "")),
            body=event.body,
            key=event.key,
            headers=event.application_headers(),
            consumer_group=h.get(HEADER_GROUP, ""),
            error_type=h.get(HEADER_ERROR_TYPE, ""),
            error_message=h.get(HEADER_ERROR_MESSAGE, ""),
        )
