"""Barrier-safe saga participants: a consumer's handlers for a step's action and
compensation commands, which apply each at most once (:class:`~txmq.saga.barrier.Barrier`)
and stage the reply through the outbox, all in the handler's one transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Table
from sqlalchemy.orm import Session

from txmq.consumer import Consumer, RetryPolicy
from txmq.message import Message
from txmq.outbox import Producer
from txmq.saga.barrier import Barrier, BarrierOutcome, BarrierResult, Reply
from txmq.saga.commands import FAILURE, SUCCESS, SagaCommand, reply_message

log = logging.getLogger("txmq.saga")

ActionFn = Callable[[SagaCommand, Session], Reply]
CompensationFn = Callable[[SagaCommand, Session], object]


class SagaParticipant:
    """Registers barrier-safe handlers on ``consumer`` and replies through ``producer``.

    The consumer and the producer must share the participant's database (the barrier table
    lives there too): the barrier row, the handler's effects, the inbox row and the reply
    commit together.

    Args:
        consumer: the participant's consumer group.
        producer: stages the replies (its relay publishes them).
        barrier: the barrier table from :func:`~txmq.saga.make_barrier_table`.

    Example:
        >>> payment = SagaParticipant(consumer=consumer, producer=producer, barrier=barrier)
        >>> @payment.action("payment.charge")
        ... def charge(command: SagaCommand, session: Session) -> dict[str, int]:
        ...     session.execute(charges.insert().values(order=command.data["order"]))
        ...     return {"charged": command.data["amount"]}
        >>> @payment.compensation("payment.refund")
        ... def refund(command: SagaCommand, session: Session) -> None:
        ...     session.execute(charges.delete().where(charges.c.order == command.data["order"]))
    """

    def __init__(self, *, consumer: Consumer, producer: Producer, barrier: Table) -> None:
        self.consumer = consumer
        self.producer = producer
        self.barrier = Barrier(barrier)

    def action(
        self, topic: str, *, retry: RetryPolicy | None = None
    ) -> Callable[[ActionFn], ActionFn]:
        """Register ``fn(command, session)`` as the action handler of ``topic``. It returns
        the reply's result (a JSON-able mapping, or None) or raises
        :class:`~txmq.errors.StepFailed` for a business failure; any other exception is
        retried by the consumer. A duplicate is answered with the first reply; an action
        after its compensation is skipped without a reply (the saga has moved on)."""

        def register(fn: ActionFn) -> ActionFn:
            def handle(message: Message, session: Session) -> None:
                command = SagaCommand.of(message)
                result = self.barrier.action(
                    session, command.saga_id, command.step, lambda: fn(command, session)
                )
                self._reply(session, command, result)

            self.consumer.add_handler(topic, handle, retry=retry)
            return fn

        return register

    def compensation(
        self, topic: str, *, retry: RetryPolicy | None = None
    ) -> Callable[[CompensationFn], CompensationFn]:
        """Register ``fn(command, session)`` as the compensation handler of ``topic``: it
        runs only if the step's action was applied, once; a compensation before its action
        is recorded (and replied to) as done without running ``fn``."""

        def register(fn: CompensationFn) -> CompensationFn:
            def handle(message: Message, session: Session) -> None:
                command = SagaCommand.of(message)
                result = self.barrier.compensation(
                    session, command.saga_id, command.step, lambda: fn(command, session)
                )
                self._reply(session, command, result)

            self.consumer.add_handler(topic, handle, retry=retry)
            return fn

        return register

    def _reply(self, session: Session, command: SagaCommand, result: BarrierResult) -> None:
        log.debug(
            "saga %s step %s %s: %s%s",
            command.saga_id,
            command.step,
            command.op,
            result.outcome,
            " (duplicate)" if result.duplicate else "",
        )
        if result.outcome is BarrierOutcome.HANGING or not command.reply_to:
            return
        failed = result.outcome is BarrierOutcome.FAILED
        reply = reply_message(
            command,
            outcome=FAILURE if failed else SUCCESS,
            result=result.reply,
            error=result.error,
        )
        self.producer.stage(session, reply)
