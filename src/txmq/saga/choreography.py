"""Choreographed sagas: event-driven participants that consume an event and stage the next
ones in the same transaction, with failure events that drive compensating handlers and the
saga id travelling in headers (``x-txmq-saga-id``, ``x-txmq-saga-name``).

Every handler runs behind the participant's barrier (:class:`~txmq.saga.barrier.Barrier`),
keyed by the saga id and the step it stands for: an event delivered again is applied once,
and a failure event that arrives before the event it compensates undoes nothing and makes
the late event a no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session

from txmq.consumer import Consumer, RetryPolicy
from txmq.errors import SagaError
from txmq.message import Message, validate_name
from txmq.outbox import Producer
from txmq.saga.barrier import Barrier, BarrierOutcome, BarrierResult
from txmq.saga.commands import decode_object, encode_object
from txmq.wire.headers import HEADER_SAGA_ID, HEADER_SAGA_NAME, HEADER_SAGA_STEP


@dataclass(frozen=True, slots=True)
class Emit:
    """An event for a choreography handler to stage: its topic and JSON data."""

    topic: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SagaEvent:
    """An event as a choreography handler sees it.

    Attributes:
        saga_id: the saga it belongs to (from ``x-txmq-saga-id``).
        saga_name: the saga's name.
        topic: the event's topic.
        data: its JSON data.
        message: the message itself.
    """

    saga_id: str
    saga_name: str
    topic: str
    data: dict[str, Any]
    message: Message

    @classmethod
    def of(cls, message: Message) -> SagaEvent:
        """Read an event from ``message``.

        Raises:
            SagaError: it carries no saga id, or its body is not a JSON object.
        """
        saga_id = message.headers.get(HEADER_SAGA_ID)
        if not saga_id:
            raise SagaError(f"message {message.id} on {message.topic!r} has no saga id")
        return cls(
            saga_id=saga_id,
            saga_name=message.headers.get(HEADER_SAGA_NAME, ""),
            topic=message.topic,
            data=decode_object(message),
            message=message,
        )


#: A handler's answer: the events to stage next (none, one, or several).
Emitted = Emit | Sequence[Emit] | None
HandlerFn = Callable[[SagaEvent, Session], Emitted]
#: A compensating handler's answer: data to add to the event it emits, or None.
CompensationFn = Callable[[SagaEvent, Session], Mapping[str, Any] | None]


def saga_event(saga_id: str, saga_name: str, emit: Emit, *, step: str = "") -> Message:
    """The message of an event of saga ``saga_id`` (keyed by the saga id: one saga's events
    keep their order)."""
    headers = {HEADER_SAGA_ID: saga_id, HEADER_SAGA_NAME: saga_name}
    if step:
        headers[HEADER_SAGA_STEP] = step
    body = encode_object({"data": dict(emit.data)})
    return Message(emit.topic, body, key=saga_id, headers=headers)


class Choreography:
    """One participant's handlers in a choreographed saga.

    The consumer, the producer and the barrier table share the participant's database:
    the barrier row, the handler's effects, the inbox row and the next events commit
    together.

    Args:
        consumer: the participant's consumer group.
        producer: stages the events the handlers emit.
        barrier: the barrier table from :func:`~txmq.saga.make_barrier_table`.

    Example:
        >>> payment = Choreography(consumer=consumer, producer=producer, barrier=barrier)
        >>> @payment.on("ORDER_CREATED", step="payment")
        ... def bill(event: SagaEvent, session: Session) -> Emit:
        ...     session.execute(charges.insert().values(order=event.data["order"]))
        ...     return Emit("BILLED_ORDER", event.data)
        >>> @payment.compensate("PRODUCT_OUT_OF_STOCK", step="payment", emits="ORDER_REFUNDED")
        ... def refund(event: SagaEvent, session: Session) -> None:
        ...     session.execute(charges.delete().where(charges.c.order == event.data["order"]))
    """

    def __init__(self, *, consumer: Consumer, producer: Producer, barrier: Table) -> None:
        self.consumer = consumer
        self.producer = producer
        self.barrier = Barrier(barrier)

    def start(self, session: Session, saga_name: str, saga_id: str, first: Emit) -> str:
        """Stage the first event of a new saga in ``session``'s transaction; return its id."""
        validate_name(saga_name, "saga name")
        self.producer.stage(session, saga_event(saga_id, saga_name, first))
        return saga_id

    def on(
        self,
        topic: str,
        *,
        step: str | None = None,
        failure: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Register ``fn(event, session)`` as the action of step ``step`` (default: the
        topic) on ``topic``; the events it returns are staged in its transaction. If it
        raises :class:`~txmq.errors.StepFailed`, its effects are rolled back and, with
        ``failure``, the failure event ``failure`` is staged instead (the error in its
        ``error`` field). Applied once per saga; skipped after the step's compensation."""

        def register(fn: HandlerFn) -> HandlerFn:
            branch = step or topic

            def handle(message: Message, session: Session) -> None:
                event = SagaEvent.of(message)
                emitted: list[Emit] = []

                def run() -> None:
                    emitted.extend(_as_list(fn(event, session)))

                result = self.barrier.action(session, event.saga_id, branch, run)
                if result.outcome is BarrierOutcome.FAILED and failure is not None:
                    emitted = [Emit(failure, {**event.data, "error": result.error})]
                self._stage(session, event, branch, result, emitted)

            self.consumer.add_handler(topic, handle, retry=retry)
            return fn

        return register

    def compensate(
        self,
        topic: str,
        *,
        step: str,
        emits: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> Callable[[CompensationFn], CompensationFn]:
        """Register ``fn(event, session)`` on the failure event ``topic`` as the
        compensation of step ``step``: it runs once, and only if the step's action was
        applied. With ``emits``, the event ``emits`` is staged in the same transaction
        (the failure event's data, updated with what ``fn`` returns), also when the action
        never ran and nothing was undone (then with ``"empty": true``): the flow goes on
        either way, and the late action is a no-op."""

        def register(fn: CompensationFn) -> CompensationFn:
            def handle(message: Message, session: Session) -> None:
                event = SagaEvent.of(message)
                extra: dict[str, Any] = {}

                def run() -> None:
                    extra.update(fn(event, session) or {})

                result = self.barrier.compensation(session, event.saga_id, step, run)
                if result.outcome is BarrierOutcome.EMPTY:
                    extra["empty"] = True
                emitted = [Emit(emits, {**event.data, **extra})] if emits else []
                self._stage(session, event, step, result, emitted)

            self.consumer.add_handler(topic, handle, retry=retry)
            return fn

        return register

    def _stage(
        self,
        session: Session,
        event: SagaEvent,
        step: str,
        result: BarrierResult,
        emitted: Sequence[Emit],
    ) -> None:
        if result.duplicate or result.outcome is BarrierOutcome.HANGING or not emitted:
            return
        self.producer.stage(
            session,
            *(saga_event(event.saga_id, event.saga_name, e, step=step) for e in emitted),
        )


def _as_list(emitted: Emitted) -> list[Emit]:
    if emitted is None:
        return []
    if isinstance(emitted, Emit):
        return [emitted]
    return list(emitted)
