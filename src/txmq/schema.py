"""txmq's tables: where they live by default, and their explicit creation.

txmq never creates tables behind your back. Either define its tables on your own
``MetaData`` (:func:`txmq.make_outbox_tables`, :func:`txmq.make_inbox_table`) and let your
migrations create them, or call :func:`create_schema` once at deployment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Engine, MetaData, Table

if TYPE_CHECKING:
    from txmq.outbox.tables import OutboxTables

#: The default home of txmq's tables (``txmq_outbox``, ``txmq_tx_marker``, ``txmq_inbox``)
#: when you do not pass tables made on your own ``MetaData``.
metadata = MetaData()


def create_schema(engine: Engine, *tables: Table | OutboxTables) -> None:
    """Create txmq's tables on ``engine`` where they do not exist yet (idempotent).

    Args:
        engine: the database of the outbox and/or the inbox.
        tables: what to create: tables from :func:`~txmq.make_outbox_tables` and
            :func:`~txmq.make_inbox_table`; by default the outbox, marker and inbox tables
            on :data:`metadata`.

    Example:
        >>> txmq.create_schema(engine)  # doctest: +SKIP
    """
    from txmq.consumer.tables import default_inbox_table
    from txmq.outbox.tables import OutboxTables, make_outbox_tables

    chosen = tables or (make_outbox_tables(metadata), default_inbox_table)
    for item in chosen:
        for table in (item.records, item.markers) if isinstance(item, OutboxTables) else (item,):
            table.create(engine, checkfirst=True)
