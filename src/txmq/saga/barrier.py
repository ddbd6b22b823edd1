"""The branch barrier (after DTM's): a participant's action or compensation applied at most
once per ``(saga id, step)``, in the participant's own transaction, whatever order and
however often the broker delivers the commands.

Each call inserts a row keyed by ``(saga id, step, op)`` in the handler's transaction
before the handler's effects:

* a **duplicate** action or compensation finds its row: the effect is not applied again,
  and the first call's outcome (and reply) is returned so that it can be answered again;
* a compensation also inserts the **action** row (outcome ``blocked``): when it succeeds,
  the action never ran (lost or late), so there is nothing to undo (an **empty
  compensation**), and the late action then finds its row taken and is skipped (a
  **hanging request**);
* an action that raises :class:`~txmq.errors.StepFailed` is rolled back to a savepoint
  (its effects undone) and recorded ``failed``, so a compensation of it is empty.

An insert that meets a row of a still-running transaction waits for it, and the row is then
read as committed (a locking read on MariaDB/MySQL), so a compensation racing its action
either sees it committed (and undoes it) or blocks it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Table, select, update
from sqlalchemy.orm import Session

from txmq.errors import SagaError, StepFailed
from txmq.sql.dialect import UniqueInsert, dialect_of
from txmq.sql.schema import raises_schema_missing

#: What a step's action returns: a JSON-able mapping for the orchestrator, or None.
Reply = Mapping[str, Any] | None

ACTION = "action"
COMPENSATION = "compensation"


class BarrierOutcome(StrEnum):
    """How a barrier call ended (as recorded in the barrier row)."""

    #: The effect ran and committed with the row.
    APPLIED = "applied"
    #: The action raised StepFailed: its effects were rolled back.
    FAILED = "failed"
    #: A compensation came before its action: nothing to undo, and the action is blocked.
    EMPTY = "empty"
    #: An action came after its step's compensation: skipped (the row says ``blocked``).
    HANGING = "hanging"


@dataclass(frozen=True, slots=True)
class BarrierResult:
    """What a barrier call did.

    Attributes:
        outcome: how the first call of this ``(saga, step, op)`` ended.
        duplicate: True when this call found the row of an earlier one and applied nothing.
        reply: the action's reply (the first call's, for a duplicate).
        error: the StepFailed message of a failed action.
    """

    outcome: BarrierOutcome
    duplicate: bool = False
    reply: Reply = None
    error: str | None = None

    @property
    def applied_now(self) -> bool:
        """Whether this call ran the handler's effect."""
        return self.outcome is BarrierOutcome.APPLIED and not self.duplicate


@raises_schema_missing
class Barrier:
    """The barrier rows of one participant, in ``table`` (from
    :func:`~txmq.saga.make_barrier_table`).

    Every method raises :class:`~txmq.errors.SchemaMissing` where the table is missing.

    Example:
        >>> barrier = Barrier(make_barrier_table(metadata))  # doctest: +SKIP
        >>> result = barrier.action(session, "saga-1", "payment", lambda: charge(session))
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self._insert = UniqueInsert(
            table, key=table.c.op, columns=("saga_id", "step", "op", "outcome", "created_at")
        )

    def action(
        self, session: Session, saga_id: str, step: str, fn: Callable[[], Reply]
    ) -> BarrierResult:
        """Run ``fn`` (the action's effects, on ``session``) unless this step's action or
        compensation was seen already, and record it in the session's transaction.

        Raises:
            SagaError: ``fn`` returned something that is not a JSON-able mapping or None.
            Exception: whatever ``fn`` raises besides StepFailed (nothing is recorded; the
                consumer retries the message).
        """
        connection = session.connection()
        if not self._claim(connection, saga_id, step, ACTION, "applied"):
            return self._earlier(connection, saga_id, step, ACTION)
        savepoint = session.begin_nested()
        try:
            reply = fn()
            encoded = _encode_reply(reply)
            savepoint.commit()
        except StepFailed as exc:
            savepoint.rollback()
            self._record(connection, saga_id, step, ACTION, outcome="failed", error=str(exc))
            return BarrierResult(BarrierOutcome.FAILED, error=str(exc))
        except BaseException:
            if savepoint.is_active:
                savepoint.rollback()
            raise
        self._record(connection, saga_id, step, ACTION, reply=encoded)
        return BarrierResult(BarrierOutcome.APPLIED, reply=reply)

    def compensation(
        self, session: Session, saga_id: str, step: str, fn: Callable[[], object]
    ) -> BarrierResult:
        """Run ``fn`` (undo the action's effects) if and only if this step's action was
        applied and not compensated yet; record the compensation in the session's
        transaction. A compensation before its action blocks the action.

        Raises:
            Exception: whatever ``fn`` raises (nothing is recorded; the consumer retries).
        """
        connection = session.connection()
        if not self._claim(connection, saga_id, step, COMPENSATION, "applied"):
            return self._earlier(connection, saga_id, step, COMPENSATION)
        if self._claim(connection, saga_id, step, ACTION, "blocked"):
            self._record(connection, saga_id, step, COMPENSATION, outcome="empty")
            return BarrierResult(BarrierOutcome.EMPTY)
        action = self._row(connection, saga_id, step, ACTION)
        if action is None or action.outcome != "applied":
            self._record(connection, saga_id, step, COMPENSATION, outcome="empty")
            return BarrierResult(BarrierOutcome.EMPTY)
        fn()
        return BarrierResult(BarrierOutcome.APPLIED)

    def _claim(
        self, connection: Connection, saga_id: str, step: str, op: str, outcome: str
    ) -> bool:
        row = {
            "saga_id": saga_id,
            "step": step,
            "op": op,
            "outcome": outcome,
            "created_at": datetime.now(UTC),
        }
        return self._insert.one(connection, row)

    def _row(self, connection: Connection, saga_id: str, step: str, op: str) -> Any:
        c = self.table.c
        query = select(c.outcome, c.reply, c.error).where(
            c.saga_id == saga_id, c.step == step, c.op == op
        )
        # The row may be one the claim's insert just waited for: a plain read would miss it
        # under REPEATABLE READ once the transaction has read (a consumer batch).
        return connection.execute(dialect_of(connection.dialect).committed_read(query)).first()

    def _earlier(self, connection: Connection, saga_id: str, step: str, op: str) -> BarrierResult:
        row = self._row(connection, saga_id, step, op)
        if row is None:  # deleted between the insert and the read: an operator's doing
            raise SagaError(f"barrier row of saga {saga_id} step {step} {op} vanished")
        if row.outcome == "blocked":
            return BarrierResult(BarrierOutcome.HANGING)
        reply = json.loads(row.reply) if row.reply else None
        return BarrierResult(
            BarrierOutcome(row.outcome), duplicate=True, reply=reply, error=row.error
        )

    def _record(
        self,
        connection: Connection,
        saga_id: str,
        step: str,
        op: str,
        *,
        outcome: str = "applied",
        reply: str | None = None,
        error: str | None = None,
    ) -> None:
        c = self.table.c
        connection.execute(
            update(self.table)
            .where(c.saga_id == saga_id, c.step == step, c.op == op)
            .values(outcome=outcome, reply=reply, error=error)
        )


def _encode_reply(reply: Reply) -> str | None:
    if reply is None:
        return None
    if not isinstance(reply, Mapping):
        raise SagaError(f"a saga action returns a mapping or None, not {type(reply).__name__}")
    try:
        return json.dumps(dict(reply), separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise SagaError(f"a saga action's reply is not JSON-able: {exc}") from exc
