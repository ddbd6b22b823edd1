"""Step timeouts: "if no reply has come by then, wake the orchestrator", and cancelling it.

The seam between the orchestrator and how a timeout is kept. Here a timeout is the saga
row's ``deadline``, written in the same transaction as the command it guards (so it
survives any crash with it) and cleared by the reply's transaction; the orchestrator's
timeout loop claims the rows whose deadline has passed (``FOR UPDATE SKIP LOCKED``, so
several orchestrators share the work).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection

from txmq.saga.definition import Step
from txmq.saga.store import SagaInstance, SagaStore


class StepTimeouts:
    """Schedules, cancels and finds step timeouts of the instances in ``store``."""

    def __init__(self, store: SagaStore) -> None:
        self.store = store

    def schedule(self, instance: SagaInstance, step: Step) -> None:
        """Time out ``instance``'s outstanding command after ``step.timeout`` (saved with it)."""
        instance.deadline = datetime.now(UTC) + step.timeout

    def cancel(self, instance: SagaInstance) -> None:
        """No command of ``instance`` is outstanding any more."""
        instance.deadline = None

    def expire_now(self, instance: SagaInstance) -> None:
        """Make the timeout loop handle ``instance`` at its next pass (operators)."""
        instance.deadline = datetime.now(UTC)

    def due(self, connection: Connection, limit: int) -> list[str]:
        """The ids of instances timed out now, locked for ``connection``'s transaction
        where the database can (others skip them)."""
        return self.store.due(connection, datetime.now(UTC), limit)
