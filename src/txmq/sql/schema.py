"""Creating txmq's tables explicitly, and what a missing one is
(:class:`~txmq.errors.SchemaMissing`).

txmq never creates tables behind your back. Either define its tables on your own
``MetaData`` (:func:`txmq.make_outbox_tables`, :func:`txmq.make_inbox_table`) and let your
migrations create them, or call :func:`create_schema` once at deployment.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from sqlalchemy import Engine, Table
from sqlalchemy import inspect as inspect_database
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateIndex

from txmq.errors import SchemaMissing
from txmq.sql.tables import OutboxTables, default_inbox_table, default_outbox_tables, each_table


def create_schema(engine: Engine, *tables: Table | OutboxTables) -> None:
    """Create txmq's tables on ``engine`` where they do not exist yet (idempotent).

    Args:
        engine: the database of the outbox and/or the inbox.
        tables: what to create: tables from :func:`~txmq.make_outbox_tables` and
            :func:`~txmq.make_inbox_table`; by default the outbox, marker and inbox tables
            on :data:`txmq.metadata`.

    Example:
        >>> txmq.create_schema(engine)  # doctest: +SKIP
    """
    chosen = tables or (default_outbox_tables(), default_inbox_table())
    for table in each_table(chosen):
        table.create(engine, checkfirst=True)


def upgrade_statements(engine: Engine, *tables: Table | OutboxTables) -> list[str]:
    """The DDL that brings existing tables up to ``tables`` (by default the outbox, marker
    and inbox tables on :data:`txmq.metadata`), additively: each missing nullable column
    (``ALTER TABLE .. ADD COLUMN``) and each missing index. Tables that do not exist are
    left to :func:`create_schema`; nothing is dropped or altered.

    For example, tables made before delayed messages lack ``deliver_at`` and the
    ``_delayed`` and ``_cancelled`` indexes.

    Raises:
        SchemaMissing: a missing column is NOT NULL (no additive statement can add it).
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached or inspected.
    """
    chosen = tables or (default_outbox_tables(), default_inbox_table())
    statements: list[str] = []
    with engine.connect() as connection:
        inspector = inspect_database(connection)
        dialect = connection.dialect
        for table in each_table(chosen):
            if not inspector.has_table(table.name, schema=table.schema):
                continue
            found = {c["name"] for c in inspector.get_columns(table.name, schema=table.schema)}
            quote = dialect.identifier_preparer
            for column in table.columns:
                if column.name in found:
                    continue
                if not column.nullable and column.server_default is None:
                    raise SchemaMissing(
                        f"{table.fullname} lacks the NOT NULL column {column.name}: "
                        "no additive upgrade can add it; recreate the table"
                    )
                statements.append(
                    f"ALTER TABLE {quote.format_table(table)} ADD COLUMN "
                    f"{quote.format_column(column)} {column.type.compile(dialect=dialect)}"
                )
            indexes = {i["name"] for i in inspector.get_indexes(table.name, schema=table.schema)}
            for index in sorted(table.indexes, key=lambda i: str(i.name)):
                if index.name not in indexes:
                    statements.append(str(CreateIndex(index).compile(dialect=dialect)).strip())
    return statements


def upgrade_schema(engine: Engine, *tables: Table | OutboxTables) -> list[str]:
    """Run :func:`upgrade_statements` in one transaction; return the statements run.

    Raises:
        SchemaMissing / sqlalchemy.exc.SQLAlchemyError: as :func:`upgrade_statements`.
    """
    statements = upgrade_statements(engine, *tables)
    with engine.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
    return statements


#: PostgreSQL's SQLSTATE for ``undefined_table``, whatever the driver reports it through.
UNDEFINED_TABLE = "42P01"
#: PostgreSQL's SQLSTATE for ``undefined_column``.
UNDEFINED_COLUMN = "42703"

#: How to add the columns and indexes a newer txmq needs to existing tables.
UPGRADE_HINT = (
    "add them with `txmq schema upgrade --database URL` (`--dry-run` prints the DDL for "
    "your migrations), or txmq.upgrade_schema(engine)"
)

#: How to create txmq's tables, for :class:`SchemaMissing` messages.
CREATE_HINT = (
    "create them with txmq.create_schema(engine), with your migrations "
    "(txmq.make_outbox_tables / txmq.make_inbox_table on your MetaData), or with "
    "`txmq schema create --database URL`"
)

C = TypeVar("C", bound=type)
P = ParamSpec("P")
R = TypeVar("R")


def is_missing_table(exc: BaseException) -> bool:
    """Whether ``exc`` (SQLAlchemy's or the driver's) says a table does not exist.

    PostgreSQL: SQLSTATE 42P01, as psycopg, psycopg2 and asyncpg report it; SQLite:
    ``no such table``.
    """
    error = exc.orig if isinstance(exc, DBAPIError) else exc
    if (getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)) == UNDEFINED_TABLE:
        return True
    # Checked by module, so that sqlite3 is not imported for it.
    return type(error).__module__ == "sqlite3" and str(error).startswith("no such table")


def is_missing_column(exc: BaseException) -> bool:
    """Whether ``exc`` (SQLAlchemy's or the driver's) says a column does not exist:
    PostgreSQL's SQLSTATE 42703; SQLite's ``no such column`` or ``has no column named``."""
    error = exc.orig if isinstance(exc, DBAPIError) else exc
    if (getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)) == UNDEFINED_COLUMN:
        return True
    text = str(error)
    return type(error).__module__ == "sqlite3" and (
        text.startswith("no such column") or " has no column named " in text
    )


def as_schema_missing(exc: BaseException) -> SchemaMissing | None:
    """The :class:`SchemaMissing` to raise (from ``exc``) if ``exc`` is a missing table, or
    a missing column (tables made by an older txmq)."""
    error = exc.orig if isinstance(exc, DBAPIError) else exc
    detail = str(error).strip().splitlines()[0]
    if is_missing_table(exc):
        return SchemaMissing(f"txmq's tables are missing ({detail}): {CREATE_HINT}")
    if is_missing_column(exc):
        return SchemaMissing(
            f"txmq's tables lack a column this version needs ({detail}): {UPGRADE_HINT}"
        )
    return None


@contextmanager
def missing_tables_raise_schema_missing() -> Iterator[None]:
    """Raise :class:`SchemaMissing` (the database error as its cause) for a missing table."""
    try:
        yield
    except Exception as exc:
        missing = as_schema_missing(exc)
        if missing is None:
            raise
        raise missing from exc


def raises_schema_missing(cls: C) -> C:
    """Class decorator: each public method of ``cls`` raises :class:`SchemaMissing` where
    its SQL meets a missing table (the boundary between txmq and the database)."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(cls, name, _translating(member))
    return cls


def _translating(method: Callable[P, R]) -> Callable[P, R]:
    # try/except rather than the context manager: the inbox claim runs once per message.
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            missing = as_schema_missing(exc)
            if missing is None:
                raise
            raise missing from exc

    return wrapper
