"""The saga tables, offered as factories on the application's ``MetaData`` like the outbox
and the inbox (:mod:`txmq.sql.tables`): the participant's barrier and the orchestrator's
saga instances. txmq never creates them behind your back: create them with your
migrations or :func:`txmq.create_schema`.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, MetaData, String, Table, Text, text

from txmq.message import NAME_MAX_LENGTH
from txmq.sql.tables import DEFAULT_PREFIX, Timestamp

_UTC = Timestamp()


def make_barrier_table(
    metadata: MetaData, *, prefix: str = DEFAULT_PREFIX, schema: str | None = None
) -> Table:
    """Define a participant's barrier table ``<prefix>saga_barrier`` on ``metadata``.

    One row per ``(saga id, step, op)``, ``op`` being ``action`` or ``compensation``: the
    primary key is what makes a duplicate command a no-op, and the ``action`` row that a
    compensation writes when it comes first is what turns the late action into one.

    Example:
        >>> make_barrier_table(MetaData()).name
        'txmq_saga_barrier'
    """
    name = f"{prefix}saga_barrier"
    existing = metadata.tables.get(name if schema is None else f"{schema}.{name}")
    if existing is not None:
        return existing
    return Table(
        name,
        metadata,
        Column("saga_id", String(64), primary_key=True),
        Column("step", String(NAME_MAX_LENGTH), primary_key=True),
        Column("op", String(16), primary_key=True),
        Column("outcome", String(16), nullable=False),
        Column("reply", Text, nullable=True),
        Column("error", Text, nullable=True),
        Column("created_at", _UTC, nullable=False),
        schema=schema,
    )


def make_saga_table(
    metadata: MetaData, *, prefix: str = DEFAULT_PREFIX, schema: str | None = None
) -> Table:
    """Define the orchestrator's saga instance table ``<prefix>saga`` on ``metadata``.

    One row per saga instance: its state (:class:`~txmq.saga.SagaState`), the step it is at
    and whether that step's action or compensation is outstanding, the attempt, the
    deadline of the outstanding command and the id of its delayed timeout message, when an
    operator asked for a retry or an abort (``nudged_at``), the saga data and step results
    (JSON) and the history of what happened (JSON).

    Example:
        >>> make_saga_table(MetaData(), prefix="shop_").name
        'shop_saga'
    """
    name = f"{prefix}saga"
    existing = metadata.tables.get(name if schema is None else f"{schema}.{name}")
    if existing is not None:
        return existing
    table = Table(
        name,
        metadata,
        Column("id", String(64), primary_key=True),
        Column("saga_name", String(NAME_MAX_LENGTH), nullable=False),
        Column("state", String(16), nullable=False),
        Column("step_index", Integer, nullable=False),
        Column("op", String(16), nullable=False),
        Column("attempt", Integer, nullable=False, server_default=text("1")),
        Column("deadline", _UTC, nullable=True),
        Column("timeout_id", String(64), nullable=True),
        Column("nudged_at", _UTC, nullable=True),
        Column("data", Text, nullable=False),
        Column("results", Text, nullable=False, server_default=text("'{}'")),
        Column("history", Text, nullable=False, server_default=text("'[]'")),
        Column("last_error", Text, nullable=True),
        Column("trace_context", Text, nullable=True),
        Column("step_started_at", _UTC, nullable=False),
        Column("created_at", _UTC, nullable=False),
        Column("updated_at", _UTC, nullable=False),
        schema=schema,
    )
    Index(f"ix_{name}_nudged", table.c.nudged_at)
    Index(f"ix_{name}_state", table.c.state, table.c.updated_at)
    return table


def make_saga_event_table(
    metadata: MetaData, *, prefix: str = DEFAULT_PREFIX, schema: str | None = None
) -> Table:
    """Define the choreography tracker's table ``<prefix>saga_event`` on ``metadata``: one
    row per event of a choreographed saga the tracker saw (primary key ``(saga id, message
    id)``, so an event delivered twice is recorded once).

    Example:
        >>> make_saga_event_table(MetaData()).name
        'txmq_saga_event'
    """
    name = f"{prefix}saga_event"
    existing = metadata.tables.get(name if schema is None else f"{schema}.{name}")
    if existing is not None:
        return existing
    table = Table(
        name,
        metadata,
        Column("saga_id", String(64), primary_key=True),
        Column("message_id", String(64), primary_key=True),
        Column("saga_name", String(NAME_MAX_LENGTH), nullable=False),
        Column("topic", String(NAME_MAX_LENGTH), nullable=False),
        Column("step", String(NAME_MAX_LENGTH), nullable=True),
        Column("data", Text, nullable=False),
        Column("seen_at", _UTC, nullable=False),
        schema=schema,
    )
    Index(f"ix_{name}_seen_at", table.c.seen_at)
    return table
