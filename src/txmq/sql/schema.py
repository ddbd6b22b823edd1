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
from sqlalchemy.exc import DBAPIError

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


#: PostgreSQL's SQLSTATE for ``undefined_table``, whatever the driver reports it through.
UNDEFINED_TABLE = "42P01"

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


def as_schema_missing(exc: BaseException) -> SchemaMissing | None:
    """The :class:`SchemaMissing` to raise (from ``exc``) if ``exc`` is a missing table."""
    if not is_missing_table(exc):
        return None
    error = exc.orig if isinstance(exc, DBAPIError) else exc
    detail = str(error).strip().splitlines()[0]
    return SchemaMissing(f"txmq's tables are missing ({detail}): {CREATE_HINT}")


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
