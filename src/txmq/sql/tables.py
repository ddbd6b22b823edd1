"""txmq's tables, offered as factories on the application's ``MetaData``.

Put them on your own metadata so Alembic autogenerate sees them::

    from sqlalchemy import MetaData
    import txmq

    metadata = MetaData()
    outbox = txmq.make_outbox_tables(metadata)   # txmq_outbox, txmq_tx_marker
    inbox = txmq.make_inbox_table(metadata)      # txmq_inbox

or create them explicitly with :func:`txmq.create_schema`. txmq never creates tables behind
your back. Both factories take the same options: ``prefix`` (the start of every table
name, ``txmq_`` by default) and ``schema`` (the database schema the tables live in).

A leaf module: it imports SQLAlchemy and txmq's value modules only, so every other part of
txmq may import it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
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
    TypeDecorator,
    event,
    literal_column,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from txmq.errors import ConfigurationError
from txmq.message import KEY_MAX_LENGTH, NAME_MAX_LENGTH
from txmq.states import RecordState

#: The start of every txmq table name unless a factory is given another ``prefix``.
DEFAULT_PREFIX = "txmq_"
#: The inbox table's name with the default prefix.
DEFAULT_INBOX_TABLE = f"{DEFAULT_PREFIX}inbox"

#: PostgreSQL NOTIFY channel the relays LISTEN on.
NOTIFY_CHANNEL = "txmq_outbox"

#: Inbox row states: the handler's transaction committed, or the message was dead-lettered
#: (a late copy of a dead-lettered message must not be applied after all).
STATUS_DONE = "done"
STATUS_DEAD = "dead"

#: The default home of txmq's tables (``txmq_outbox``, ``txmq_tx_marker``, ``txmq_inbox``)
#: when you do not pass tables made on your own ``MetaData``. The tables are put on it the
#: first time they are needed (:func:`default_outbox_tables`, :func:`default_inbox_table`).
metadata = MetaData()

#: BIGINT on servers; SQLite only auto-increments an INTEGER PRIMARY KEY.
_SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")


class Timestamp(TypeDecorator[datetime]):
    """A point in time: ``TIMESTAMP WITH TIME ZONE`` where the server has it, and
    ``DATETIME(6)`` on MySQL and MariaDB, whose plain ``DATETIME`` keeps whole seconds only
    (a delayed message would then be due up to a second early). Values are UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))


_UTC = Timestamp()


@dataclass(frozen=True, slots=True)
class OutboxTables:
    """The two tables of the producer side.

    Attributes:
        records: one row per outbox / half message. ``seq`` orders publishing; ``state`` is a
            :class:`~txmq.states.RecordState`; ``tx_key`` is set for self-answering half
            messages; ``check_after`` is when the next check-back (PREPARED) or publish attempt
            (READY) is due; ``deliver_at`` is when a delayed message is due (NULL: at once),
            kept while it is PREPARED or DELAYED.
        markers: transaction markers of self-answering half messages: ``tx_key`` is unique;
            ``outcome`` is ``COMMIT`` (written first thing by the local transaction) or
            ``ROLLBACK`` (written by a check-back that found the key free).
    """

    records: Table
    markers: Table


def make_outbox_tables(
    metadata: MetaData, *, prefix: str = DEFAULT_PREFIX, schema: str | None = None
) -> OutboxTables:
    """Define the outbox tables on ``metadata``: ``<prefix>outbox`` and ``<prefix>tx_marker``,
    in ``schema`` (None: the connection's default schema).

    Calling it again with the same metadata, prefix and schema returns the same tables.

    Example:
        >>> make_outbox_tables(MetaData(), prefix="shop_").records.name
        'shop_outbox'
    """
    records_name, markers_name = f"{prefix}outbox", f"{prefix}tx_marker"
    existing = metadata.tables.get(_full_name(records_name, schema))
    if existing is not None:
        return OutboxTables(existing, metadata.tables[_full_name(markers_name, schema)])
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
        Column("deliver_at", _UTC, nullable=True),
        Column("created_at", _UTC, nullable=False),
        Column("updated_at", _UTC, nullable=False),
        Column("last_error", Text, nullable=True),
        schema=schema,
    )
    # Partial indexes hold only the rows a query looks for, so staging a READY row touches
    # as few indexes as possible (MySQL, which has none, gets full ones).
    ready = in_state(records, RecordState.READY)
    prepared = in_state(records, RecordState.PREPARED)
    finished = in_state(records, RecordState.SENT, RecordState.ROLLED_BACK)
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
    # Delayed records wait outside the READY indexes, so that however many wait, a claim
    # reads none of them; a relay finds the due ones through this index.
    _partial_index(
        f"ix_{records_name}_delayed",
        in_state(records, RecordState.DELAYED),
        records.c.producer_group,
        records.c.deliver_at,
    )
    _partial_index(
        f"ix_{records_name}_cancelled",
        in_state(records, RecordState.CANCELLED),
        records.c.updated_at,
    )
    _notify_relays_on_ready(records)
    markers = Table(
        markers_name,
        metadata,
        Column("tx_key", String(64), primary_key=True),
        Column("outcome", String(16), nullable=False),
        Column("created_at", _UTC, nullable=False),
        schema=schema,
    )
    return OutboxTables(records, markers)


def make_inbox_table(
    metadata: MetaData,
    name: str | None = None,
    *,
    prefix: str | None = None,
    schema: str | None = None,
) -> Table:
    """Define the inbox table on ``metadata``: ``name``, or ``<prefix>inbox`` (by default
    ``txmq_inbox``), in ``schema`` (None: the connection's default schema).

    Calling it again with the same metadata, name and schema returns the same table.

    Primary key ``(consumer_group, message_key)``: the unique constraint that makes a
    redelivered message a no-op. ``message_key`` is the message id, or ``id#replay-n`` for
    the n-th DLQ replay.

    Raises:
        ConfigurationError: both ``name`` and ``prefix`` are given.

    Example:
        >>> make_inbox_table(MetaData()).name
        'txmq_inbox'
        >>> make_inbox_table(MetaData(), prefix="shop_").name
        'shop_inbox'
    """
    if name is not None and prefix is not None:
        raise ConfigurationError("make_inbox_table takes a name or a prefix, not both")
    if name is None:
        name = f"{DEFAULT_PREFIX if prefix is None else prefix}inbox"
    existing = metadata.tables.get(_full_name(name, schema))
    if existing is not None:
        return existing
    return Table(
        name,
        metadata,
        Column("consumer_group", String(120), primary_key=True),
        Column("message_key", String(96), primary_key=True),
        Column("topic", String(120), nullable=False),
        Column("status", String(8), nullable=False),
        Column("processed_at", _UTC, nullable=False),
        Column("error_type", String(200), nullable=True),
        Column("error_message", String(500), nullable=True),
        Index(f"ix_{name}_processed_at", "processed_at"),
        schema=schema,
    )


def default_outbox_tables() -> OutboxTables:
    """The outbox tables on :data:`metadata`, used by a producer given no tables."""
    return make_outbox_tables(metadata)


def default_inbox_table() -> Table:
    """The inbox table on :data:`metadata`, used by a consumer given no inbox."""
    return make_inbox_table(metadata)


def each_table(items: Iterable[Table | OutboxTables]) -> list[Table]:
    """The tables of ``items``, an :class:`OutboxTables` standing for its two."""
    return [
        table
        for item in items
        for table in ((item.records, item.markers) if isinstance(item, OutboxTables) else (item,))
    ]


def notify_ddl(table_name: str, *, schema: str | None = None) -> list[str]:
    """PostgreSQL DDL that wakes relays when a statement leaves READY rows in ``table_name``
    (of ``schema``, if given).

    A statement-level trigger costs the staging transaction no extra round trip; the NOTIFY
    is delivered when the transaction commits. :func:`make_outbox_tables` attaches it to the
    table's creation; with Alembic, add these statements to the migration that creates the
    outbox (autogenerate does not see triggers). Without the trigger relays still work, by
    polling.
    """
    table = _full_name(table_name, schema)
    function = f"{table}_notify"
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
        # A trigger lives in its table's schema: its name is never qualified.
        statements.append(
            f"CREATE TRIGGER {table_name}_{operation.lower()}_notify AFTER {operation} "
            f"ON {table} REFERENCING NEW TABLE AS txmq_new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )
    return statements


def _full_name(name: str, schema: str | None) -> str:
    """The key of a table in ``MetaData.tables``, and its name in DDL: ``schema.name``."""
    return name if schema is None else f"{schema}.{name}"


#: What a state's value may hold to be written into SQL text.
_STATE_VALUE = re.compile("[A-Z_]+")


def in_state(records: Table, *states: RecordState) -> ColumnElement[bool]:
    """``state = 'READY'`` (``IN (..)`` for several), the states written into the SQL.

    Every query on the outbox filters on its state this way, and so do the partial indexes'
    predicates. A planner uses a partial index only where it can prove the predicate from the
    query, and a bound parameter proves nothing to a plan made for any value: once
    PostgreSQL switched a prepared claim (psycopg prepares a statement after five runs) to
    its generic plan, every claim read the whole table through the primary key.
    """
    values = []
    for state in states:
        # RecordState's own constants; the check keeps the SQL text safe if one is added.
        if not _STATE_VALUE.fullmatch(state.value):
            raise ValueError(f"record state {state.value!r} cannot be written into SQL")
        values.append(literal_column(f"'{state.value}'", String))
    if len(values) == 1:
        return records.c.state == values[0]
    return records.c.state.in_(values)


def _partial_index(name: str, where: ColumnElement[bool], *columns: Column[Any]) -> Index:
    return Index(name, *columns, postgresql_where=where, sqlite_where=where)


def _notify_relays_on_ready(records: Table) -> None:
    drop = f"DROP FUNCTION IF EXISTS {records.fullname}_notify()"
    create = notify_ddl(records.name, schema=records.schema)
    for when, statement in [("after_create", s) for s in create] + [("after_drop", drop)]:
        ddl = DDL(statement)  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy
        event.listen(records, when, ddl.execute_if(dialect="postgresql"))
