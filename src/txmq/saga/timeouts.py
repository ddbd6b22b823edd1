"""Step timeouts: "if no reply has come by then, tell the orchestrator", and cancelling it.

A step's timeout is a delayed message (``Producer.stage(..., delay=)``) to the saga's
timeout topic, staged in the transaction that stages the command it guards, and cancelled
(``Producer.cancel``) by the transaction that moves the saga on. It lives in the outbox
until due, so it survives any crash with the command. A cancel that comes too late (the
timeout was already released to the relay) is harmless: the orchestrator acts only on the
timeout whose id the saga row holds.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from txmq.message import Message
from txmq.outbox import Producer
from txmq.saga.definition import Step
from txmq.saga.store import SagaInstance
from txmq.wire.headers import HEADER_SAGA_ID, HEADER_SAGA_NAME, HEADER_SAGA_OP, HEADER_SAGA_STEP


class StepTimeouts:
    """Schedules and cancels the step timeouts of one saga through ``producer``, as delayed
    messages on ``topic``."""

    def __init__(self, producer: Producer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    def schedule(self, session: Session, instance: SagaInstance, step: Step) -> None:
        """Time out ``instance``'s outstanding command after ``step.timeout``, replacing its
        previous timeout (cancelled), in ``session``'s transaction."""
        self.cancel(session, instance)
        headers = {
            HEADER_SAGA_ID: instance.id,
            HEADER_SAGA_NAME: instance.saga_name,
            HEADER_SAGA_STEP: step.name,
            HEADER_SAGA_OP: instance.op,
        }
        timeout = Message(self.topic, b"{}", key=instance.id, headers=headers)
        self.producer.stage(session, timeout, delay=step.timeout)
        instance.timeout_id = timeout.id
        instance.deadline = datetime.now(UTC) + step.timeout

    def cancel(self, session: Session, instance: SagaInstance) -> None:
        """No command of ``instance`` is outstanding any more: withdraw its timeout."""
        if instance.timeout_id is not None:
            self.producer.cancel(session, instance.timeout_id)
        instance.timeout_id = None
        instance.deadline = None
