"""Inbox rows: claim a message key inside the handler's transaction, find duplicates, purge.

PostgreSQL and SQLite use ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (no exception,
no aborted transaction; the returned row says "new"); other databases insert inside a
savepoint and read a unique violation as a duplicate.

On PostgreSQL the claim of one message goes straight to the DBAPI cursor, in the same
transaction: SQLAlchemy's work per execution (cache key, execution context, result
wrapping) costs as much CPU as the driver's own round trip, and this statement runs once
per message. Engine events (``before_cursor_execute``) do not see it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Insert, Table, TextClause, delete, insert, select, text
from sqlalchemy.exc import IntegrityError

from txmq.consumer.tables import STATUS_DEAD, STATUS_DONE, default_inbox_table
from txmq.schema import missing_tables_raise_schema_missing, raises_schema_missing

#: DBAPI parameter styles taking ``%s`` placeholders (every synchronous PostgreSQL driver).
_PERCENT_PARAMSTYLES = frozenset({"format", "pyformat"})
#: Column order of the rows :meth:`Inbox.claim` writes through the cursor.
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
        self._statements: dict[str, Insert | None] = {}
        self._unnest: TextClause | None = None
        self._claim_sql: str | None = None

    def _claim_statement(self, connection: Connection) -> Insert | None:
        """``INSERT .. ON CONFLICT DO NOTHING RETURNING key`` on SQLite, else None.

        Built once per dialect: the statement is on the path of every message.
        """
        dialect = connection.dialect.name
        if dialect not in self._statements:
            statement: Insert | None = None
            if dialect == "sqlite":
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
        dialect = connection.dialect
        if dialect.name == "postgresql" and dialect.paramstyle in _PERCENT_PARAMSTYLES:
            return self._claim_postgresql(connection, key, topic, status, error)
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

    def _claim_postgresql(
        self,
        connection: Connection,
        key: str,
        topic: str,
        status: str,
        error: tuple[str, str] | None,
    ) -> bool:
        if self._claim_sql is None:
            table, c = self._quoted(connection)
            self._claim_sql = (
                f"INSERT INTO {table} ({', '.join(c[name] for name in _CLAIM_COLUMNS)}) "
                f"VALUES ({', '.join(['%s'] * len(_CLAIM_COLUMNS))}) "
                f"ON CONFLICT DO NOTHING RETURNING {c['message_key']}"
            )
        values = (self.group, key, topic, status, datetime.now(UTC), *(error or (None, None)))
        # The DBAPI connection under ``connection``: the row joins its open transaction.
        cursor = connection.connection.cursor()
        try:
            cursor.execute(self._claim_sql, values)
            return cursor.fetchone() is not None
        finally:
            cursor.close()

    def _quoted(self, connection: Connection) -> tuple[str, dict[str, str]]:
        """The table's quoted (schema-qualified) name and its quoted column names."""
        quote = connection.dialect.identifier_preparer
        return quote.format_table(self.table), {c.name: quote.quote(c.name) for c in self.table.c}

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
            table, c = self._quoted(connection)
            self._unnest = text(
                f"INSERT INTO {table} "
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

    Raises:
        SchemaMissing: the inbox table does not exist.
    """
    table = inbox if inbox is not None else default_inbox_table
    statement = delete(table).where(table.c.processed_at < datetime.now(UTC) - older_than)
    if group is not None:
        statement = statement.where(table.c.consumer_group == group)
    with missing_tables_raise_schema_missing(), engine.begin() as connection:
        return connection.execute(statement).rowcount
