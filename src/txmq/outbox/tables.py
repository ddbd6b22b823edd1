"""The outbox tables, where the README's migration notes name them
(``txmq.outbox.tables.notify_ddl``); they are defined in :mod:`txmq.sql.tables`."""

from __future__ import annotations

from txmq.sql.tables import OutboxTables, make_outbox_tables, notify_ddl

__all__ = ["OutboxTables", "make_outbox_tables", "notify_ddl"]
