"""Inbox rows: claim a message key inside the handler's transaction, find duplicates, purge.

PostgreSQL and SQLite use ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (no exception,
no aborted transaction; the returned row says "new"); other databases insert inside a
savepoint and read a unique violation as a duplicate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Insert, Table, TextClause, delete, insert, select, text
from sqlalchemy.exc import IntegrityError

from txmq.consumer.tables import STATUS_DEAD, STATUS_DONE, default_inbox_table

_UPSERT_DIALECTS = frozenset({"postgresql", "sqlite"})


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """An existing inbox row: how an earlier delivery of the message ended."""

    status: str
    error_type: str | None
    error_message: str | None

    @property
    def dead(self) -> bool:
        return self.status == STATUS_DEAD


class Inbox:
    """The inbox rows of one consumer group in one table."""

    def __init__(self, table: Table, group: str) -> None:
        self.table = table
        self.group = group
        self._statements: dict[str, Insert | None] = {}
        self._unnest: TextClause | None = None

    def _claim_statement(self, connection: Connection) -> Insert | None:
        """``INSERT .. ON CONFLICT DO NOTHING RETURNING key`` where the dialect has it, else None.

        Built once per dialect: the statement is on the path of every message.
        """
        dialect = connection.dialect.name
        if dialect not in self._statements:
            statement: Insert | None = None
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                statement = pg_insert(self.table).on_conflict_do_nothing()
            elif dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                statement = sqlite_insert(self.table).on_conflict_do_nothing()
            if statement is not None:
                statement = statement.returning(self.table.c.message_key)
            self._statements[dialect] = statement
        return self._statements[dialect]

    def _row(
        self, key: str, topic: str, status: str, error: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        return {
            "consumer_group": self.group,
            "message_key": key,
            "topic": topic,
            "status": status,
            "processed_at": datetime.now(UTC),
            "error_type": error[0] if error else None,
            "error_message": error[1] if error else None,
        }

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
        row = self._row(key, topic, status, error)
        statement = self._claim_statement(connection)
        if statement is not None:
            # RETURNING, not rowcount: drivers need not report a rowcount for INSERT.
            return connection.execute(statement, row).first() is not None
        try:
            with connection.begin_nested():
                connection.execute(insert(self.table), row)
        except IntegrityError:
            return False
        return True

    def claim_many(self, connection: Connection, rows: Sequence[tuple[str, str]]) -> set[str]:
        """Insert rows ``(key, topic)`` in one statement; return the keys that were new."""
        if connection.dialect.name == "postgresql":
            return self._claim_many_postgresql(connection, rows)
        statement = self._claim_statement(connection)
        if statement is None:
            return {key for key, topic in rows if self.claim(connection, key, topic)}
        # A list of parameter sets, not .values(list): SQLAlchemy caches the compiled
        # statement and batches the rows into multi-row INSERTs itself ("insertmanyvalues").
        values = [self._row(key, topic, STATUS_DONE) for key, topic in rows]
        return set(connection.execute(statement, values).scalars())

    def _claim_many_postgresql(
        self, connection: Connection, rows: Sequence[tuple[str, str]]
    ) -> set[str]:
        """One statement with two array parameters: its text never changes, so the driver
        and the server reuse its plan (a multi-row VALUES list would be new text per size)."""
        if self._unnest is None:
            quote = connection.dialect.identifier_preparer
            c = {column.name: quote.quote(column.name) for column in self.table.c}
            self._unnest = text(
                f"INSERT INTO {quote.format_table(self.table)} "
                f"({c['consumer_group']}, {c['message_key']}, {c['topic']}, {c['status']}, "
                f"{c['processed_at']}) "
                "SELECT :group, u.k, u.t, :status, :at "
                "FROM unnest(CAST(:keys AS varchar[]), CAST(:topics AS varchar[])) AS u(k, t) "
                f"ON CONFLICT DO NOTHING RETURNING {c['message_key']}"
            )
        result = connection.execute(
            self._unnest,
            {
                "group": self.group,
                "status": STATUS_DONE,
                "at": datetime.now(UTC),
                "keys": [key for key, _ in rows],
                "topics": [topic for _, topic in rows],
            },
        )
        return set(result.scalars())

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
    """
    table = inbox if inbox is not None else default_inbox_table
    statement = delete(table).where(table.c.processed_at < datetime.now(UTC) - older_than)
    if group is not None:
        statement = statement.where(table.c.consumer_group == group)
    with engine.begin() as connection:
        return connection.execute(statement).rowcount
