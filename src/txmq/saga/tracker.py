"""A read-only tracker of choreographed sagas: a consumer group of its own that records
every event of the saga's topics, and reconstructs a saga's progress from them (``txmq saga
show``). It stages nothing and changes nothing the flow depends on."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Table, select
from sqlalchemy.orm import Session

from txmq.consumer import Consumer
from txmq.message import Message
from txmq.saga.choreography import SagaEvent
from txmq.sql.dialect import UniqueInsert
from txmq.sql.schema import raises_schema_missing
from txmq.wire.headers import HEADER_SAGA_STEP

#: A tracked saga's status: the last event's topic is one of ``completed`` / ``failed``.
COMPLETED = "COMPLETED"
FAILED = "FAILED"
IN_PROGRESS = "IN_PROGRESS"


@dataclass(frozen=True, slots=True)
class TrackedEvent:
    """One event of a tracked saga."""

    topic: str
    step: str | None
    data: dict[str, Any]
    seen_at: datetime
    message_id: str


@dataclass(frozen=True, slots=True)
class SagaProgress:
    """A choreographed saga as its events tell it.

    Attributes:
        saga_id: the saga.
        saga_name: its name.
        status: ``COMPLETED``, ``FAILED`` or ``IN_PROGRESS``.
        events: its events in the order they were created (their UUIDv7 ids; within a
            millisecond, events staged by different processes may come out swapped).
    """

    saga_id: str
    saga_name: str
    status: str
    events: tuple[TrackedEvent, ...]

    def as_json(self) -> dict[str, Any]:
        """The progress as a JSON object (``txmq saga show --json``)."""
        return {
            "id": self.saga_id,
            "saga": self.saga_name,
            "state": self.status,
            "events": [
                {
                    "topic": e.topic,
                    "step": e.step,
                    "data": e.data,
                    "seen_at": e.seen_at.isoformat(),
                    "message_id": e.message_id,
                }
                for e in self.events
            ],
        }


@raises_schema_missing
class SagaTracker:
    """Records the events of ``topics`` in ``table`` (from
    :func:`~txmq.saga.make_saga_event_table`) through ``consumer``, a group of its own.

    Args:
        consumer: the tracker's consumer group (start it yourself).
        table: where the events are recorded (on the consumer's database).
        topics: the saga's event topics.
        completed: topics that end a saga successfully.
        failed: topics that end it as failed.

    Every method raises :class:`~txmq.errors.SchemaMissing` where the table is missing.
    """

    def __init__(
        self,
        *,
        consumer: Consumer,
        table: Table,
        topics: Iterable[str],
        completed: Sequence[str] = (),
        failed: Sequence[str] = (),
    ) -> None:
        self.engine: Engine = consumer.engine
        self.table = table
        self.completed = tuple(completed)
        self.failed = tuple(failed)
        self._insert = UniqueInsert(
            table,
            key=table.c.message_id,
            columns=("saga_id", "message_id", "saga_name", "topic", "step", "data", "seen_at"),
        )
        for topic in topics:
            consumer.add_handler(topic, self._record)

    def progress(self, saga_id: str) -> SagaProgress | None:
        """What the tracker saw of ``saga_id``; None if nothing."""
        return progress_of(self.engine, self.table, saga_id, self.completed, self.failed)

    def _record(self, message: Message, session: Session) -> None:
        event = SagaEvent.of(message)
        row = {
            "saga_id": event.saga_id,
            "message_id": message.id,
            "saga_name": event.saga_name,
            "topic": event.topic,
            "step": message.headers.get(HEADER_SAGA_STEP),
            "data": json.dumps(event.data, separators=(",", ":")),
            "seen_at": datetime.now(UTC),
        }
        self._insert.one(session.connection(), row)


def progress_of(
    engine: Engine,
    table: Table,
    saga_id: str,
    completed: Sequence[str] = (),
    failed: Sequence[str] = (),
) -> SagaProgress | None:
    """The progress of ``saga_id`` from the tracker's ``table``; None if it has no event.
    Without ``completed`` / ``failed`` topics the status stays ``IN_PROGRESS``."""
    c = table.c
    # By message id: UUIDv7s sort by creation time, so the events come out in the order
    # they were staged, whatever order the tracker received them in from several topics.
    query = select(table).where(c.saga_id == saga_id).order_by(c.message_id)
    with engine.connect() as connection:
        rows = list(connection.execute(query))
    if not rows:
        return None
    events = tuple(
        TrackedEvent(
            topic=row.topic,
            step=row.step,
            data=json.loads(row.data),
            seen_at=row.seen_at if row.seen_at.tzinfo else row.seen_at.replace(tzinfo=UTC),
            message_id=row.message_id,
        )
        for row in rows
    )
    topics = {e.topic for e in events}
    status = IN_PROGRESS
    if topics & set(failed):
        status = FAILED
    elif topics & set(completed):
        status = COMPLETED
    return SagaProgress(saga_id, rows[0].saga_name, status, events)
