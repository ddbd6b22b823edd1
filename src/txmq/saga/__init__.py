"""Sagas on txmq's transactional messages: barrier-safe participants, an orchestrator whose
saga instances advance one local transaction per step, and choreography helpers.

See docs/sagas.md for the guarantees.
"""

from __future__ import annotations

from txmq.errors import SagaError, SagaNotFound, StepFailed
from txmq.saga.barrier import Barrier, BarrierOutcome, BarrierResult
from txmq.saga.choreography import Choreography, Emit, SagaEvent
from txmq.saga.commands import SagaCommand
from txmq.saga.definition import SagaDefinition, SagaState, Step
from txmq.saga.operators import abort_saga, retry_saga
from txmq.saga.orchestrator import Orchestrator
from txmq.saga.participant import SagaParticipant
from txmq.saga.store import SagaInstance, SagaStore
from txmq.saga.tables import make_barrier_table, make_saga_event_table, make_saga_table
from txmq.saga.tracker import SagaProgress, SagaTracker, TrackedEvent

__all__ = [
    "Barrier",
    "BarrierOutcome",
    "BarrierResult",
    "Choreography",
    "Emit",
    "Orchestrator",
    "SagaCommand",
    "SagaDefinition",
    "SagaError",
    "SagaEvent",
    "SagaInstance",
    "SagaNotFound",
    "SagaParticipant",
    "SagaProgress",
    "SagaState",
    "SagaStore",
    "SagaTracker",
    "Step",
    "StepFailed",
    "TrackedEvent",
    "abort_saga",
    "make_barrier_table",
    "make_saga_event_table",
    "make_saga_table",
    "retry_saga",
]
