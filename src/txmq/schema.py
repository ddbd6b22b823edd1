"""Explicit creation of txmq's tables.

txmq never creates tables behind your back. Either add its tables to your own ``MetaData``
(:func:`txmq.make_outbox_tables`, :func:`txmq.make_inbox_table`) and let your migrations
create them, or call :func:`create_schema` once at deployment.
"""

from __future__ import annotations

from sqlalchemy import Engine, MetaData

from txmq.outbox.producer import metadata as default_metadata
from txmq.outbox.tables import make_outbox_tables


def create_schema(
    engine: Engine, *, metadata: MetaData | None = None, prefix: str = "txmq_"
) -> None:
    """Create txmq's tables on ``engine`` if they do not exist yet (idempotent).

    Args:
        engine: the database of the outbox / inbox.
        metadata: where the tables are defined (default: ``txmq.metadata``).
        prefix: table name prefix, as given to the table factories.
    """
    metadata = metadata if metadata is not None else default_metadata
    outbox = make_outbox_tables(metadata, prefix=prefix)
    metadata.create_all(engine, tables=[outbox.records, outbox.markers])
