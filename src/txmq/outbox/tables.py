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

from sqlalchemy import (
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
    text,
)

from txmq.message import KEY_MAX_LENGTH, NAME_MAX_LENGTH

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
    # The relay's claim: READY rows in seq order.
    Index(f"ix_{records_name}_state_seq", records.c.state, records.c.seq)
    # The check-back scan, the purge of SENT rows and the per-key order check.
    Index(f"ix_{records_name}_state_check", records.c.state, records.c.check_after)
    Index(f"ix_{records_name}_state_updated", records.c.state, records.c.updated_at)
    Index(f"ix_{records_name}_key_state", records.c.key, records.c.state, records.c.seq)
    markers = Table(
        markers_name,
        metadata,
        Column("tx_key", String(64), primary_key=True),
        Column("outcome", String(16), nullable=False),
        Column("created_at", _UTC, nullable=False),
    )
    return OutboxTables(records, markers)
