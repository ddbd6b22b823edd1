"""Saga instances in the orchestrator's database: read, lock, write, list."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, Table, func, insert, select, update

from txmq.saga.definition import ACTIVE_STATES, SagaState
from txmq.sql.dialect import dialect_of
from txmq.sql.schema import raises_schema_missing


@dataclass(slots=True)
class SagaInstance:
    """One saga instance as stored (a working copy: the orchestrator changes it and saves).

    Attributes:
        id: the saga id.
        saga_name: its definition's name.
        state: a :class:`SagaState`.
        step_index: the step whose command is outstanding (or was last).
        op: ``action`` or ``compensation``: which of that step's commands.
        attempt: how often that command was sent.
        deadline: when the outstanding command times out (None when done).
        timeout_id: the id of the delayed timeout message of the outstanding command.
        nudged_at: when an operator asked for a retry or an abort not yet carried out.
        data: the saga data (JSON).
        results: each step's reply result, by step name.
        history: what happened, oldest first (dicts with ``at``, ``step``, ``op``, ``event``).
        last_error: the last failure's text.
        trace_context: the W3C trace context of the saga's trace.
        step_started_at: when the outstanding command was first sent.
    """

    id: str
    saga_name: str
    state: SagaState
    step_index: int
    op: str
    attempt: int
    deadline: datetime | None
    data: dict[str, Any]
    timeout_id: str | None = None
    nudged_at: datetime | None = None
    results: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    last_error: str | None = None
    trace_context: str | None = None
    step_started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def note(self, step: str, op: str, event: str, **extra: Any) -> None:
        """Append ``event`` to the history."""
        entry = {"at": datetime.now(UTC).isoformat(), "step": step, "op": op, "event": event}
        self.history.append(entry | extra)

    def as_json(self) -> dict[str, Any]:
        """The instance as a JSON object (``txmq saga show --json``)."""
        return {
            "id": self.id,
            "saga": self.saga_name,
            "state": self.state.value,
            "step_index": self.step_index,
            "op": self.op,
            "attempt": self.attempt,
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "timeout_id": self.timeout_id,
            "nudged_at": self.nudged_at.isoformat() if self.nudged_at else None,
            "data": self.data,
            "results": self.results,
            "history": self.history,
            "last_error": self.last_error,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@raises_schema_missing
class SagaStore:
    """The saga instances in ``table`` (from :func:`~txmq.saga.make_saga_table`).

    Every method raises :class:`~txmq.errors.SchemaMissing` where the table is missing.
    """

    def __init__(self, engine: Engine, table: Table) -> None:
        self.engine = engine
        self.table = table
        self.sql = dialect_of(engine.dialect)

    def insert(self, connection: Connection, instance: SagaInstance) -> None:
        """Write a new instance in ``connection``'s transaction."""
        connection.execute(insert(self.table).values(**self._values(instance), id=instance.id))

    def save(self, connection: Connection, instance: SagaInstance) -> None:
        """Write ``instance`` back in ``connection``'s transaction."""
        instance.updated_at = datetime.now(UTC)
        connection.execute(
            update(self.table)
            .where(self.table.c.id == instance.id)
            .values(**self._values(instance))
        )

    def lock(self, connection: Connection, saga_id: str) -> SagaInstance | None:
        """The instance, locked until ``connection``'s transaction ends (where the database
        has row locks; SQLite has one writer at a time)."""
        query = self.sql.row_lock(select(self.table).where(self.table.c.id == saga_id))
        row = connection.execute(query).first()
        return None if row is None else _instance(row)

    def nudged(self, connection: Connection, limit: int, *, saga_name: str) -> list[str]:
        """Ids of ``saga_name``'s active instances an operator asked to retry or abort,
        skipping those locked by another orchestrator (the table may hold other sagas: their
        requests are left to their own orchestrators)."""
        c = self.table.c
        query = (
            select(c.id)
            .where(
                c.nudged_at.is_not(None),
                c.saga_name == saga_name,
                c.state.in_([s.value for s in ACTIVE_STATES]),
            )
            .order_by(c.nudged_at)
            .limit(limit)
        )
        return [row[0] for row in connection.execute(self.sql.claim_lock(query))]

    def get(self, saga_id: str) -> SagaInstance | None:
        """The instance with ``saga_id``; None if there is none."""
        with self.engine.connect() as connection:
            row = connection.execute(select(self.table).where(self.table.c.id == saga_id)).first()
        return None if row is None else _instance(row)

    def list(
        self, *, states: Sequence[SagaState] = (), saga_name: str | None = None, limit: int = 100
    ) -> list[SagaInstance]:
        """Instances, most recently updated first, in ``states`` (all when empty)."""
        c = self.table.c
        query = select(self.table).order_by(c.updated_at.desc()).limit(limit)
        if states:
            query = query.where(c.state.in_([s.value for s in states]))
        if saga_name is not None:
            query = query.where(c.saga_name == saga_name)
        with self.engine.connect() as connection:
            return [_instance(row) for row in connection.execute(query)]

    def count_by_state(self) -> dict[str, dict[SagaState, int]]:
        """How many instances of each saga name are in each state (every state present)."""
        c = self.table.c
        counts: dict[str, dict[SagaState, int]] = {}
        with self.engine.connect() as connection:
            query = select(c.saga_name, c.state, func.count()).group_by(c.saga_name, c.state)
            for name, state, count in connection.execute(query):
                counts.setdefault(name, dict.fromkeys(SagaState, 0))[SagaState(state)] = count
        return counts

    @staticmethod
    def _values(instance: SagaInstance) -> dict[str, Any]:
        return {
            "saga_name": instance.saga_name,
            "state": instance.state.value,
            "step_index": instance.step_index,
            "op": instance.op,
            "attempt": instance.attempt,
            "deadline": instance.deadline,
            "timeout_id": instance.timeout_id,
            "nudged_at": instance.nudged_at,
            "data": json.dumps(instance.data, separators=(",", ":")),
            "results": json.dumps(instance.results, separators=(",", ":")),
            "history": json.dumps(instance.history, separators=(",", ":")),
            "last_error": instance.last_error,
            "trace_context": instance.trace_context,
            "step_started_at": instance.step_started_at,
            "created_at": instance.created_at,
            "updated_at": instance.updated_at,
        }


def _instance(row: Row[Any]) -> SagaInstance:
    m = row._mapping
    return SagaInstance(
        id=m["id"],
        saga_name=m["saga_name"],
        state=SagaState(m["state"]),
        step_index=m["step_index"],
        op=m["op"],
        attempt=m["attempt"],
        deadline=_aware(m["deadline"]),
        timeout_id=m["timeout_id"],
        nudged_at=_aware(m["nudged_at"]),
        data=json.loads(m["data"]),
        results=json.loads(m["results"]),
        history=json.loads(m["history"]),
        last_error=m["last_error"],
        trace_context=m["trace_context"],
        step_started_at=_aware(m["step_started_at"]) or datetime.now(UTC),
        created_at=_aware(m["created_at"]) or datetime.now(UTC),
        updated_at=_aware(m["updated_at"]) or datetime.now(UTC),
    )


def _aware(value: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back: they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
