"""The inbox table: one row per message a consumer group has finished with.

Offered as a factory on the application's ``MetaData`` so Alembic autogenerate sees it;
:func:`create_schema` creates it explicitly. txmq never creates tables on its own.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Engine, Index, MetaData, String, Table

#: Row states: the handler's transaction committed, or the message was dead-lettered
#: (a late copy of a dead-lettered message must not be applied after all).
STATUS_DONE = "done"
STATUS_DEAD = "dead"

DEFAULT_INBOX_TABLE = "txmq_inbox"


def make_inbox_table(
    metadata: MetaData, name: str = DEFAULT_INBOX_TABLE, *, schema: str | None = None
) -> Table:
    """Define the inbox table on ``metadata``.

    Primary key ``(consumer_group, message_key)``: the unique constraint that makes a
    redelivered message a no-op. ``message_key`` is the message id, or ``id#replay-n`` for
    the n-th DLQ replay.

    Example:
        >>> md = MetaData()
        >>> make_inbox_table(md).name
        'txmq_inbox'
    """
    return Table(
        name,
        metadata,
        Column("consumer_group", String(120), primary_key=True),
        Column("message_key", String(96), primary_key=True),
        Column("topic", String(120), nullable=False),
        Column("status", String(8), nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False),
        Column("error_type", String(200), nullable=True),
        Column("error_message", String(500), nullable=True),
        Index(f"ix_{name}_processed_at", "processed_at"),
        schema=schema,
    )


_default_metadata = MetaData()
default_inbox_table = make_inbox_table(_default_metadata)


def create_schema(engine: Engine, inbox: Table | None = None) -> None:
    """Create the inbox table (default ``txmq_inbox``) if it does not exist."""
    (inbox if inbox is not None else default_inbox_table).create(engine, checkfirst=True)
