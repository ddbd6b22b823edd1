"""The inbox table: one row per message a consumer group has finished with.

Offered as a factory on the application's ``MetaData`` so Alembic autogenerate sees it;
:func:`txmq.create_schema` creates it explicitly. txmq never creates tables on its own.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, MetaData, String, Table

from txmq.schema import metadata as default_metadata

#: Row states: the handler's transaction committed, or the message was dead-lettered
#: (a late copy of a dead-lettered message must not be applied after all).
STATUS_DONE = "done"
STATUS_DEAD = "dead"

DEFAULT_INBOX_TABLE = "txmq_inbox"


def make_inbox_table(
    metadata: MetaData, name: str = DEFAULT_INBOX_TABLE, *, schema: str | None = None
) -> Table:
    """Define the inbox table on ``metadata``.

    Calling it again with the same metadata and name returns the same table.

    Primary key ``(consumer_group, message_key)``: the unique constraint that makes a
    redelivered message a no-op. ``message_key`` is the message id, or ``id#replay-n`` for
    the n-th DLQ replay.

    Example:
        >>> md = MetaData()
        >>> make_inbox_table(md).name
        'txmq_inbox'
    """
    key = name if schema is None else f"{schema}.{name}"
    if key in metadata.tables:
        return metadata.tables[key]
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


#: The inbox used when a consumer is given none, on ``txmq.metadata``.
default_inbox_table = make_inbox_table(default_metadata)
