"""The inbox table, under the names the consumer worker and the command line import;
it is defined in :mod:`txmq.sql.tables`."""

from __future__ import annotations

from txmq.sql.tables import DEFAULT_INBOX_TABLE, STATUS_DEAD, STATUS_DONE, make_inbox_table

__all__ = ["DEFAULT_INBOX_TABLE", "STATUS_DEAD", "STATUS_DONE", "make_inbox_table"]
