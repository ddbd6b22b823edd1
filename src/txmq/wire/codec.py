"""A message as a body and text headers: what every broker carries, before its own encoding.

The body is the message body. The headers are the message's headers plus ``x-txmq-id``,
``x-txmq-topic`` (the logical topic, which survives retry stages, dead-lettering and
publishing straight into a queue) and ``x-txmq-key`` when there is a key. Decoding takes
those three back into :class:`~txmq.message.Message` fields, so a decoded message equals
the one that was published. Each adapter's ``wire`` module adds only its broker's encoding
(AMQP properties and tables, Kafka header bytes and record key).
"""

from __future__ import annotations

from collections.abc import Mapping

from txmq.errors import InvalidMessage, MessageDecodeError
from txmq.message import Message, build_message
from txmq.wire.headers import HEADER_ID, HEADER_KEY, HEADER_TOPIC

#: The headers that carry :class:`~txmq.message.Message` fields rather than headers.
STRUCTURAL_HEADERS = frozenset({HEADER_ID, HEADER_KEY, HEADER_TOPIC})


def wire_headers(message: Message) -> dict[str, str]:
    """The headers carrying ``message``: its own, except any stale ``x-txmq-id``, ``-topic``
    or ``-key`` it holds, plus its id, topic and key."""
    headers = {k: v for k, v in message.headers.items() if k not in STRUCTURAL_HEADERS}
    headers[HEADER_ID] = message.id
    headers[HEADER_TOPIC] = message.topic
    if message.key is not None:
        headers[HEADER_KEY] = message.key
    return headers


def message_from_wire(
    *,
    body: bytes,
    headers: Mapping[str, str],
    topic: str,
    message_id: str | None = None,
    key: str | None = None,
) -> Message:
    """The message that travelled as ``body`` and text ``headers``.

    Args:
        body: the payload as it arrived.
        headers: every header as text (the broker's own, such as RabbitMQ's ``x-death``,
            already left out).
        topic: the destination it arrived by (routing key, Kafka topic), used when there is
            no ``x-txmq-topic``.
        message_id: the broker's own message id field (AMQP ``message_id``), which wins
            over ``x-txmq-id``.
        key: the broker's own key field (the Kafka record key), used when there is no
            ``x-txmq-key``.

    Raises:
        MessageDecodeError: no message id, or fields that do not make a valid message
            (e.g. a bad topic).
    """
    message_id = message_id or headers.get(HEADER_ID)
    if not message_id:
        raise MessageDecodeError(f"no message id (no {HEADER_ID} header): not a txmq message")
    try:
        return build_message(
            topic=headers.get(HEADER_TOPIC) or topic,
            body=body,
            key=headers.get(HEADER_KEY) or key or None,
            headers={k: v for k, v in headers.items() if k not in STRUCTURAL_HEADERS},
            id=message_id,
        )
    except InvalidMessage as exc:
        raise MessageDecodeError(f"not a valid txmq message: {exc}") from exc
