"""Saga commands and replies as txmq messages: JSON bodies, the saga's identity in
``x-txmq-saga-*`` headers (:mod:`txmq.wire.headers`), the saga id as the ordering key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from txmq.errors import SagaError
from txmq.message import Message
from txmq.wire.headers import (
    HEADER_SAGA_ID,
    HEADER_SAGA_NAME,
    HEADER_SAGA_OP,
    HEADER_SAGA_OUTCOME,
    HEADER_SAGA_REPLY_TO,
    HEADER_SAGA_STEP,
)

SUCCESS = "success"
FAILURE = "failure"


@dataclass(frozen=True, slots=True)
class SagaCommand:
    """A command as a participant's handler sees it.

    Attributes:
        saga_id: the saga instance.
        saga_name: the saga's definition name.
        step: the step (the barrier's branch).
        op: ``action`` or ``compensation``.
        data: the saga data (JSON, as the orchestrator holds it).
        reply_to: the topic the reply goes to ("" when nobody waits for one).
        message: the message itself.
    """

    saga_id: str
    saga_name: str
    step: str
    op: str
    data: dict[str, Any]
    reply_to: str
    message: Message

    @classmethod
    def of(cls, message: Message) -> SagaCommand:
        """Read a command from ``message``.

        Raises:
            SagaError: it carries no saga id or step, or its body is not a JSON object.
        """
        headers = message.headers
        saga_id, step = headers.get(HEADER_SAGA_ID), headers.get(HEADER_SAGA_STEP)
        if not saga_id or not step:
            raise SagaError(f"message {message.id} on {message.topic!r} is no saga command")
        return cls(
            saga_id=saga_id,
            saga_name=headers.get(HEADER_SAGA_NAME, ""),
            step=step,
            op=headers.get(HEADER_SAGA_OP, "action"),
            data=decode_object(message),
            reply_to=headers.get(HEADER_SAGA_REPLY_TO, ""),
            message=message,
        )


def command_message(
    *,
    topic: str,
    saga_id: str,
    saga_name: str,
    step: str,
    op: str,
    data: Mapping[str, Any],
    reply_to: str,
    trace: Mapping[str, str] | None = None,
) -> Message:
    """The message of one command (a new id per attempt: the barrier, not the inbox,
    makes a re-sent command a no-op)."""
    headers = {
        HEADER_SAGA_ID: saga_id,
        HEADER_SAGA_NAME: saga_name,
        HEADER_SAGA_STEP: step,
        HEADER_SAGA_OP: op,
        HEADER_SAGA_REPLY_TO: reply_to,
        **(trace or {}),
    }
    return Message(topic, encode_object({"data": dict(data)}), key=saga_id, headers=headers)


def reply_message(
    command: SagaCommand, *, outcome: str, result: Mapping[str, Any] | None, error: str | None
) -> Message:
    """The reply to ``command``: ``success`` with the action's result, or ``failure``."""
    headers = {
        HEADER_SAGA_ID: command.saga_id,
        HEADER_SAGA_NAME: command.saga_name,
        HEADER_SAGA_STEP: command.step,
        HEADER_SAGA_OP: command.op,
        HEADER_SAGA_OUTCOME: outcome,
        **{k: v for k, v in command.message.headers.items() if k in ("traceparent", "tracestate")},
    }
    body = encode_object({"result": dict(result or {}), "error": error})
    return Message(command.reply_to, body, key=command.saga_id, headers=headers)


def encode_object(value: Mapping[str, Any]) -> bytes:
    """``value`` as compact JSON bytes.

    Raises:
        SagaError: it is not JSON-able.
    """
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
        raise SagaError(f"saga data is not JSON-able: {exc}") from exc


def decode_object(message: Message) -> dict[str, Any]:
    """The JSON object ``message`` carries (a command's ``data``, or the whole body).

    Raises:
        SagaError: the body is not a JSON object.
    """
    try:
        body = json.loads(message.body or b"{}")
    except ValueError as exc:
        raise SagaError(f"message {message.id} has no JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise SagaError(f"message {message.id}: the body is not a JSON object")
    data = body.get("data", body)
    return data if isinstance(data, dict) else {}
