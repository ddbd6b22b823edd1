"""What an operator does to a saga instance, without its definition (``txmq saga``): the
request is written on the saga row, and the orchestrator's operator loop carries it out at
its next pass."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, Table

from txmq.errors import SagaNotFound
from txmq.saga.definition import SagaState
from txmq.saga.orchestrator import ABORT
from txmq.saga.store import SagaInstance, SagaStore


def retry_saga(engine: Engine, table: Table, saga_id: str) -> SagaInstance:
    """Send a PARKED saga's compensation again, with a fresh retry budget; return it.

    Raises:
        SagaNotFound: no saga ``saga_id``, or it is not PARKED.
    """
    store = SagaStore(engine, table)
    with engine.begin() as connection:
        instance = store.lock(connection, saga_id)
        if instance is None or instance.state is not SagaState.PARKED:
            raise SagaNotFound(f"no PARKED saga {saga_id!r}")
        instance.state = SagaState.COMPENSATING
        # attempt 0: the orchestrator's retry sends attempt 1 again, with a fresh budget.
        instance.attempt = 0
        instance.nudged_at = datetime.now(UTC)
        instance.note(_step(instance), instance.op, "retried by an operator")
        store.save(connection, instance)
        return instance


def abort_saga(engine: Engine, table: Table, saga_id: str) -> SagaInstance:
    """Compensate a RUNNING (or PARKED) saga from its current step backwards; return it.

    Raises:
        SagaNotFound: no saga ``saga_id``, or it has ended (COMPLETED, FAILED) or is
            compensating already.
    """
    store = SagaStore(engine, table)
    with engine.begin() as connection:
        instance = store.lock(connection, saga_id)
        if instance is None or instance.state not in (SagaState.RUNNING, SagaState.PARKED):
            raise SagaNotFound(f"no RUNNING or PARKED saga {saga_id!r}")
        if instance.state is SagaState.PARKED:
            instance.attempt = 0
        else:
            instance.op = ABORT
        instance.state = SagaState.COMPENSATING
        instance.nudged_at = datetime.now(UTC)
        instance.note(_step(instance), instance.op, "abort asked by an operator")
        store.save(connection, instance)
        return instance


def _step(instance: SagaInstance) -> str:
    return next((h["step"] for h in reversed(instance.history) if "step" in h), "")
