"""The producer's tables, offered as a factory on the application's ``MetaData``.

Put them on your own metadata so Alembic autogenerate sees them::

    from sqlalchemy import MetaData
    import txmq

    metadata = MetaData()
    outbox = txmq.make_outbox_tables(metadata)   # add to your migrations

or create them explicitly with :func:`txmq.create_schema`. txmq never creates tables behind
your back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    DDL,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    event,
    text,
)
from sqlalchemy.sql.elements import ColumnElement

from txmq.message import KEY_MAX_LENGTH, NAME_MAX_LENGTH
from txmq.states import RecordState

#: PostgreSQL NOTIFY channel the relays LISTEN on.
NOTIFY_CHANNEL = "txmq_outbox"

#: BIGINT on servers; SQLite only auto-increments an INTEGER PRIMARY KEY.
_SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")
_UTC = DateTime(timezone=True)


@dataclass(frozen=True, slots=True)
class OutboxTables:
    """The two tables of the producer side.

    Attributes:
        records: one row per outbox / half message. ``seq`` orders publishing; ``state`` is a
            :class:`~txmq.states.RecordState`; ``tx_key`` is set for self-answering half
            messages; ``check_after`` is when the next check-back (PREPARED) or publish attempt
            (READY) is due.
        markers: transaction markers of self-answering half messages: ``tx_key`` is unique;
            ``outcome`` is ``COMMIT`` (written first thing by the local transaction) or
            ``ROLLBACK`` (written by a check-back that found the key free).
    """

    records: Table
    markers: Table


def make_outbox_tables(metadata: MetaData, *, prefix: str = "txmq_") -> OutboxTables:
    """Define the outbox tables on ``metadata`` (named ``<prefix>outbox``, ``<prefix>tx_marker``).

    Calling it twice with the same metadata and prefix returns the same tables.
    """
    records_name, markers_name = f"{prefix}outbox", f"{prefix}tx_marker"
    if records_name in metadata.tables:
        return OutboxTables(metadata.tables[records_name], metadata.tables[markers_name])
    records = Table(
        records_name,
        metadata,
        Column("seq", _SEQ_TYPE, primary_key=True, autoincrement=True),
        Column("id", String(64), nullable=False, unique=True),
        Column("producer_group", String(NAME_MAX_LENGTH), nullable=False),
        Column("topic", String(NAME_MAX_LENGTH), nullable=False),
        Column("key", String(KEY_MAX_LENGTH), nullable=True),
        Column("headers", Text, nullable=False, server_default=text("'{}'")),
        Column("body", LargeBinary, nullable=False),
        Column("state", String(16), nullable=False),
        Column("tx_key", String(64), nullable=True),
        Column("check_count", Integer, nullable=False, server_default=text("0")),
        Column("publish_attempts", Integer, nullable=False, server_default=text("0")),
        Column("check_after", _UTC, nullable=True),
        Column("created_at", _UTC, nullable=False),
        Column("updated_at", _UTC, nullable=False),
        Column("last_error", Text, nullable=True),
    )
    # Partial indexes hold only the rows a query looks for, so staging a READY row touches
    # as few indexes as possible (MySQL, which has none, gets full ones).
    ready = records.c.state == RecordState.READY.value
    prepared = records.c.state == RecordState.PREPARED.value
    finished = records.c.state.in_([RecordState.SENT.value, RecordState.ROLLED_BACK.value])
    # Relays claim per producer group: a backlog of a group nobody relays is never read.
    _partial_index(f"ix_{records_name}_ready", ready, records.c.producer_group, records.c.seq)
    _partial_index(
        f"ix_{records_name}_ready_key",
        ready & records.c.key.is_not(None),
        records.c.topic,
        records.c.key,
        records.c.seq,
    )
    _partial_index(
        f"ix_{records_name}_prepared",
        prepared,
        records.c.producer_group,
        records.c.check_after,
    )
    _partial_index(f"ix_{records_name}_finished", finished, records.c.updated_at)
    _notify_relays_on_ready(records)
    markers = Table(
        markers_name,
        metadata,
        Column("tx_key", String(64), primary_key=True),
        Column("outcome", String(16), nullable=False),
        Column("created_at", _UTC, nullable=False),
    )
    return OutboxTables(records, markers)


def _partial_index(name: str, where: ColumnElement[bool], *columns: Column[Any]) -> Index:
    return Index(name, *columns, postgresql_where=where, sqlite_where=where)


def notify_ddl(table_name: str) -> list[str]:
    """PostgreSQL DDL that wakes relays when a statement leaves READY rows in ``table_name``.

    A statement-level trigger costs the staging transaction no extra round trip; the NOTIFY
    is delivered when the transaction commits. :func:`make_outbox_tables` attaches it to the
    table's creation; with Alembic, add these statements to the migration that creates the
    outbox (autogenerate does not see triggers). Without the trigger relays still work, by
    polling.
    """
    function = f"{table_name}_notify"
    statements = [
        f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM txmq_new_rows WHERE state = 'READY') THEN
        PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
    END IF;
    RETURN NULL;
END $$"""
    ]
    for operation in ("INSERT", "UPDATE"):
        statements.append(
            f"CREATE TRIGGER {table_name}_{operation.lower()}_notify AFTER {operation} "
            f"ON {table_name} REFERENCING NEW TABLE AS txmq_new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )
    return statements


def _notify_relays_on_ready(records: Table) -> None:
    drop = f"DROP FUNCTION IF EXISTS {records.name}_notify()"
    for when, statement in [("after_create", s) for s in notify_ddl(records.name)] + [
        ("after_drop", drop)
    ]:
        ddl = DDL(statement)  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy
        event.listen(records, when, ddl.execute_if(dialect="postgresql"))
