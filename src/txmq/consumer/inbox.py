"""Inbox rows: claim a message key inside the handler's transaction, find duplicates, purge.

A claim is an insert that detects a duplicate (:class:`~txmq.sql.dialect.UniqueInsert`):
no exception, no aborted transaction. It runs once per message, so on PostgreSQL it takes
the direct-cursor path; many keys are claimed in one statement.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Table, delete, select

from txmq.sql.dialect import UniqueInsert
from txmq.sql.schema import missing_tables_raise_schema_missing, raises_schema_missing
from txmq.sql.tables import STATUS_DEAD, STATUS_DONE, default_inbox_table

#: The columns of the rows :meth:`Inbox.claim` writes.
_CLAIM_COLUMNS = (
    "consumer_group",
    "message_key",
    "topic",
    "status",
    "processed_at",
    "error_type",
    "error_message",
)


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """An existing inbox row: how an earlier delivery of the message ended."""

    status: str
    error_type: str | None
    error_message: str | None

    @property
    def dead(self) -> bool:
        return self.status == STATUS_DEAD


@raises_schema_missing
class Inbox:
    """The inbox rows of one consumer group in one table.

    Every method raises :class:`~txmq.errors.SchemaMissing` where the table is missing.
    """

    def __init__(self, table: Table, group: str) -> None:
        self.table = table
        self.group = group
        self._insert = UniqueInsert(table, key=table.c.message_key, columns=_CLAIM_COLUMNS)

    def claim(
        self,
        connection: Connection,
        key: str,
        topic: str,
        *,
        status: str = STATUS_DONE,
        error: tuple[str, str] | None = None,
    ) -> bool:
        """Insert the row for ``key``; False if it already exists (a duplicate)."""
        row: dict[str, Any] = {
            "consumer_group": self.group,
            "message_key": key,
            "topic": topic,
            "status": status,
            "processed_at": datetime.now(UTC),
            "error_type": error[0] if error else None,
            "error_message": error[1] if error else None,
        }
        return self._insert.one(connection, row)

    def claim_many(self, connection: Connection, rows: Sequence[tuple[str, str]]) -> set[str]:
        """Insert rows ``(key, topic)`` in one statement; return the keys that were new."""
        shared: dict[str, Any] = {
            "consumer_group": self.group,
            "status": STATUS_DONE,
            "processed_at": datetime.now(UTC),
        }
        topics = {topic for _, topic in rows}
        if len(topics) == 1:  # the usual batch: one topic, sent once instead of per row
            shared["topic"] = topics.pop()
            varying = [{"message_key": key} for key, _ in rows]
        else:
            varying = [{"message_key": key, "topic": topic} for key, topic in rows]
        return self._insert.many(connection, varying, shared=shared)

    def lookup(self, connection: Connection, keys: Iterable[str]) -> dict[str, InboxEntry]:
        """The existing rows among ``keys``."""
        c = self.table.c
        rows = connection.execute(
            select(c.message_key, c.status, c.error_type, c.error_message).where(
                c.consumer_group == self.group, c.message_key.in_(list(keys))
            )
        )
        return {row[0]: InboxEntry(row[1], row[2], row[3]) for row in rows}


def purge_inbox(
    engine: Engine,
    older_than: timedelta,
    *,
    inbox: Table | None = None,
    group: str | None = None,
) -> int:
    """Delete inbox rows older than ``older_than``; return how many were deleted.

    Keep rows longer than a message can be redelivered (broker retention, the longest
    retry delay, DLQ replay): a message whose row is gone is applied again if it comes back.

    Raises:
        SchemaMissing: the inbox table does not exist.
    """
    table = inbox if inbox is not None else default_inbox_table()
    statement = delete(table).where(table.c.processed_at < datetime.now(UTC) - older_than)
    if group is not None:
        statement = statement.where(table.c.consumer_group == group)
    with missing_tables_raise_schema_missing(), engine.begin() as connection:
        return connection.execute(statement).rowcount
