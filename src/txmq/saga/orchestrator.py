"""The saga orchestrator: saga instances in its database, advancing one local transaction
per step.

A reply is consumed through the inbox (the orchestrator's handler on its consumer), and in
that same transaction the instance is updated and the next command staged through the
outbox, so a crash anywhere leaves either the old step (the reply is redelivered) or the new
one (its command is in the outbox). A step's timeout is a delayed message staged with its
command (:mod:`txmq.saga.timeouts`) and consumed by the same consumer; operators' retries
and aborts are carried out by a supervised loop that any number of orchestrators run.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Table
from sqlalchemy.orm import Session

from txmq.consumer import Consumer
from txmq.errors import ConfigurationError, SagaError, SagaNotFound
from txmq.message import Message, new_message_id
from txmq.outbox import Producer
from txmq.saga.barrier import ACTION, COMPENSATION
from txmq.saga.commands import SUCCESS, command_message, decode_object
from txmq.saga.definition import ACTIVE_STATES, SagaDefinition, SagaState
from txmq.saga.store import SagaInstance, SagaStore
from txmq.saga.timeouts import StepTimeouts
from txmq.sql.hooks import after_commit, committed, discarded
from txmq.supervision import Health, SupervisedLoop, health_of
from txmq.telemetry import COMPENSATIONS, SAGAS_ENDED, STEP_DURATION
from txmq.tracing import saga_span
from txmq.wire.headers import HEADER_SAGA_ID, HEADER_SAGA_OP, HEADER_SAGA_OUTCOME, HEADER_SAGA_STEP

log = logging.getLogger("txmq.saga")

D = TypeVar("D")

#: The ``op`` an operator's abort leaves for the timeout loop: compensate from the current
#: step on (the orchestrator, which knows the steps, finds the first one to undo).
ABORT = "abort"


class Orchestrator(Generic[D]):
    """Runs the instances of one saga definition.

    Args:
        definition: the saga.
        consumer: the orchestrator's consumer group; the orchestrator registers the handlers
            of the definition's reply and timeout topics on it (start it yourself).
        producer: stages the commands; its engine is the orchestrator's database, where the
            consumer's inbox and the saga table live too.
        table: the saga table from :func:`~txmq.saga.make_saga_table`.
        poll_interval: how often the operator loop looks for retries and aborts asked.

    Raises:
        ConfigurationError: the consumer and the producer use different databases, or the
            poll interval is not positive.

    Example:
        >>> orchestrator = Orchestrator(
        ...     definition=order_saga, consumer=consumer, producer=producer, table=sagas
        ... )
        >>> orchestrator.start(); consumer.start(); producer.start()
        >>> with Session(engine) as session, session.begin():
        ...     session.add(order)
        ...     saga_id = orchestrator.begin(session, Order(order_id=7, amount=120))
    """

    def __init__(
        self,
        *,
        definition: SagaDefinition[D],
        consumer: Consumer,
        producer: Producer,
        table: Table,
        poll_interval: float = 1.0,
    ) -> None:
        if consumer.engine.url != producer.engine.url:
            raise ConfigurationError(
                "the orchestrator's consumer and producer must share one database: the "
                "reply, the saga state and the next command commit together"
            )
        if poll_interval <= 0:
            raise ConfigurationError("poll_interval must be positive")
        self.definition = definition
        self.consumer = consumer
        self.producer = producer
        self.store = SagaStore(producer.engine, table)
        self.timeouts = StepTimeouts(producer, definition.timeout_topic)
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._loop: SupervisedLoop | None = None
        consumer.add_handler(definition.reply_topic, self._on_reply)
        consumer.add_handler(definition.timeout_topic, self._on_timeout)

    # -- starting a saga ----------------------------------------------------------------

    def begin(self, session: Session, data: D, *, saga_id: str | None = None) -> str:
        """Create a saga instance and stage its first command, in ``session``'s transaction
        (both exist if and only if it commits); return the saga id.

        Raises:
            SagaError: ``data`` is not a dataclass or mapping, or not JSON-able.
            WrongDatabase: the session is not on the orchestrator's database.
        """
        now = datetime.now(UTC)
        instance = SagaInstance(
            id=saga_id or new_message_id(),
            saga_name=self.definition.name,
            state=SagaState.RUNNING,
            step_index=0,
            op=ACTION,
            attempt=1,
            deadline=None,
            data=self.definition.encode(data),
            created_at=now,
            updated_at=now,
        )
        instance.note(self.definition.steps[0].name, ACTION, "started")
        with saga_span(
            f"begin {self.definition.name}",
            saga=self.definition.name,
            saga_id=instance.id,
            traceparent=None,
        ) as context:
            # The saga's trace: every later step's span is a child of this one.
            instance.trace_context = context
            self._send(session, instance, 0, ACTION, 1)
        self.store.insert(session.connection(), instance)
        return instance.id

    # -- the loops ----------------------------------------------------------------------

    def start(self) -> Orchestrator[D]:
        """Start the operator loop in a daemon thread (replies and timeouts are handled by
        the consumer). It survives database outages; :meth:`health` says whether it died."""
        if self._loop is None or not self._loop.alive:
            self._stop.clear()
            self._loop = SupervisedLoop(
                name=f"txmq-saga-{self.definition.name}",
                step=lambda: self.run_operator_requests() > 0,
                stop=self._stop,
                idle=lambda: self._stop.wait(self.poll_interval),
            ).start()
        return self

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the operator loop."""
        self._stop.set()
        if self._loop is not None:
            self._loop.join(timeout)

    def health(self) -> Health:
        """How the operator loop is doing (see :mod:`txmq.supervision`)."""
        return health_of([self._loop] if self._loop is not None else [])

    def run_operator_requests(self, limit: int = 50) -> int:
        """Carry out up to ``limit`` retries and aborts operators asked for
        (:func:`~txmq.saga.retry_saga`, :func:`~txmq.saga.abort_saga`) in one transaction;
        return how many."""
        with Session(self.store.engine) as session:
            try:
                with session.begin():
                    handled = self._carry_out_requests(session, limit)
            except BaseException:
                discarded(session)
                raise
            committed(session)
            return handled

    def _carry_out_requests(self, session: Session, limit: int) -> int:
        connection = session.connection()
        handled = 0
        for saga_id in self.store.nudged(connection, limit, saga_name=self.definition.name):
            instance = self.store.lock(connection, saga_id)
            if instance is None or instance.nudged_at is None:
                continue
            instance.nudged_at = None
            if instance.state in ACTIVE_STATES:
                self._time_out(session, instance)
            self.store.save(connection, instance)
            handled += 1
        return handled

    # -- reading ------------------------------------------------------------------------

    def get(self, saga_id: str) -> SagaInstance:
        """The saga instance ``saga_id``.

        Raises:
            SagaNotFound: there is none.
        """
        instance = self.store.get(saga_id)
        if instance is None:
            raise SagaNotFound(f"no saga {saga_id!r}")
        return instance

    def data_of(self, instance: SagaInstance) -> D:
        """The typed data of ``instance``."""
        return self.definition.decode(instance.data)

    # -- transitions --------------------------------------------------------------------

    def _on_reply(self, message: Message, session: Session) -> None:
        headers = message.headers
        saga_id, step_name = headers.get(HEADER_SAGA_ID, ""), headers.get(HEADER_SAGA_STEP, "")
        op, outcome = headers.get(HEADER_SAGA_OP, ""), headers.get(HEADER_SAGA_OUTCOME, "")
        connection = session.connection()
        instance = self.store.lock(connection, saga_id)
        index = self.definition.index_of(step_name)
        if (
            instance is None
            or instance.saga_name != self.definition.name
            or instance.state not in ACTIVE_STATES
            or index != instance.step_index
            or op != instance.op
        ):
            # A reply to a command the saga no longer waits for: a duplicate, or a late
            # reply after a timeout moved the saga on (the barrier made it harmless).
            log.debug("saga %s: ignoring a stale %s reply of step %s", saga_id, op, step_name)
            return
        body = decode_object(message)
        error = body.get("error")
        if op == ACTION:
            self._action_replied(
                session, instance, index, succeeded=outcome == SUCCESS, body=body, error=error
            )
        else:
            self._compensation_replied(
                session, instance, index, succeeded=outcome == SUCCESS, error=error
            )
        self.store.save(connection, instance)

    def _on_timeout(self, message: Message, session: Session) -> None:
        connection = session.connection()
        instance = self.store.lock(connection, message.headers.get(HEADER_SAGA_ID, ""))
        if (
            instance is None
            or instance.saga_name != self.definition.name
            or instance.state not in ACTIVE_STATES
            or instance.timeout_id != message.id
        ):
            # Cancelled too late (the saga moved on in the meantime): nothing to do.
            return
        instance.timeout_id = None  # it fired: there is nothing left to cancel
        self._time_out(session, instance)
        self.store.save(connection, instance)

    def _action_replied(
        self,
        session: Session,
        instance: SagaInstance,
        index: int,
        *,
        succeeded: bool,
        body: dict[str, Any],
        error: object,
    ) -> None:
        step = self.definition.steps[index]
        elapsed = (datetime.now(UTC) - instance.step_started_at).total_seconds()
        duration = STEP_DURATION.labels(self.definition.name, step.name, ACTION)
        after_commit(session, lambda: duration.observe(elapsed))
        if succeeded:
            result = body.get("result")
            instance.results[step.name] = result if isinstance(result, dict) else {}
            instance.note(step.name, ACTION, "succeeded", attempt=instance.attempt)
            if index + 1 < len(self.definition.steps):
                self._send(session, instance, index + 1, ACTION, 1)
            else:
                self._end(session, instance, SagaState.COMPLETED)
            return
        instance.last_error = f"step {step.name} failed: {error}"
        instance.note(step.name, ACTION, "failed", error=str(error))
        # A failed action was rolled back by its participant: undo the steps before it.
        self._compensate_from(session, instance, index - 1)

    def _compensation_replied(
        self,
        session: Session,
        instance: SagaInstance,
        index: int,
        *,
        succeeded: bool,
        error: object,
    ) -> None:
        step = self.definition.steps[index]
        elapsed = (datetime.now(UTC) - instance.step_started_at).total_seconds()
        duration = STEP_DURATION.labels(self.definition.name, step.name, COMPENSATION)
        after_commit(session, lambda: duration.observe(elapsed))
        if succeeded:
            after_commit(session, COMPENSATIONS.labels(self.definition.name, step.name, "done").inc)
            instance.note(step.name, COMPENSATION, "compensated", attempt=instance.attempt)
            self._compensate_from(session, instance, index - 1)
        else:
            self._retry_compensation(session, instance, f"compensation failed: {error}")

    def _time_out(self, session: Session, instance: SagaInstance) -> None:
        index = instance.step_index
        step = self.definition.steps[index]
        if instance.op == ABORT:
            # Carried out (by the operator loop, or by the step's timeout that came first):
            # the operator loop must not carry it out again.
            instance.nudged_at = None
            instance.note(step.name, ABORT, "aborted by an operator")
            instance.last_error = instance.last_error or "aborted by an operator"
            # The outstanding action may have been applied: its compensation is safe either
            # way (the participant's barrier makes it empty, and blocks a late action).
            self._compensate_from(session, instance, index)
        elif instance.op == ACTION:
            if instance.attempt <= step.retries:
                instance.note(step.name, ACTION, "timed out, sent again", attempt=instance.attempt)
                self._send(session, instance, index, ACTION, instance.attempt + 1)
                return
            instance.last_error = f"step {step.name} timed out after {instance.attempt} attempts"
            instance.note(step.name, ACTION, "timed out", attempt=instance.attempt)
            # Unanswered: it may have been applied, so it is compensated too.
            self._compensate_from(session, instance, index)
        else:
            self._retry_compensation(session, instance, "compensation timed out")

    def _retry_compensation(self, session: Session, instance: SagaInstance, why: str) -> None:
        step = self.definition.steps[instance.step_index]
        if instance.attempt <= step.compensation_retries:
            instance.note(step.name, COMPENSATION, f"{why}, sent again", attempt=instance.attempt)
            self._send(session, instance, instance.step_index, COMPENSATION, instance.attempt + 1)
            return
        instance.last_error = f"step {step.name}: {why} after {instance.attempt} attempts"
        instance.note(step.name, COMPENSATION, "parked", attempt=instance.attempt)
        after_commit(session, COMPENSATIONS.labels(self.definition.name, step.name, "parked").inc)
        log.warning("saga %s parked: %s", instance.id, instance.last_error)
        self._end(session, instance, SagaState.PARKED)

    def _compensate_from(self, session: Session, instance: SagaInstance, index: int) -> None:
        """Send the compensation of the last step at or before ``index`` that has one, or
        end the saga FAILED when none is left."""
        for candidate in range(index, -1, -1):
            if self.definition.steps[candidate].compensation is not None:
                instance.state = SagaState.COMPENSATING
                self._send(session, instance, candidate, COMPENSATION, 1)
                return
        self._end(session, instance, SagaState.FAILED)

    def _send(
        self, session: Session, instance: SagaInstance, index: int, op: str, attempt: int
    ) -> None:
        step = self.definition.steps[index]
        topic = step.action if op == ACTION else step.compensation
        if topic is None:  # _compensate_from only picks steps that have one
            raise SagaError(f"step {step.name} has no compensation")
        if attempt == 1:
            instance.step_started_at = datetime.now(UTC)
        instance.step_index, instance.op, instance.attempt = index, op, attempt
        message = command_message(
            topic=topic,
            saga_id=instance.id,
            saga_name=self.definition.name,
            step=step.name,
            op=op,
            data=instance.data,
            reply_to=self.definition.reply_topic,
        )
        with saga_span(
            f"{step.name} {op}",
            saga=self.definition.name,
            saga_id=instance.id,
            traceparent=instance.trace_context,
        ):
            self.timeouts.schedule(session, instance, step)
            self.producer.stage(session, message)

    def _end(self, session: Session, instance: SagaInstance, state: SagaState) -> None:
        instance.state = state
        self.timeouts.cancel(session, instance)
        after_commit(session, SAGAS_ENDED.labels(self.definition.name, state.value).inc)
