"""How txmq's SQL differs by database: one strategy per SQLAlchemy dialect.

:func:`dialect_of` picks it from an engine's or a connection's dialect. It answers the
questions the outbox and the inbox share:

* **insert, or detect a duplicate** (:class:`UniqueInsert`): PostgreSQL and SQLite insert
  with ``ON CONFLICT DO NOTHING RETURNING`` (no exception, no aborted transaction; a
  returned row says "new"); other databases insert inside a savepoint and read a unique
  violation as a duplicate;
* **claiming with SKIP LOCKED**: PostgreSQL, MySQL 8 and MariaDB 10.6+ lock the rows they
  claim and skip the rows others hold; SQLite has no row locks (one writer at a time);
* **the direct-cursor fast path** (:class:`DirectStatement`): on PostgreSQL drivers taking
  ``%`` placeholders, a statement compiled once runs on the DBAPI cursor of the
  connection, in its transaction;
* **waiting for a NOTIFY** (:meth:`SqlDialect.waiter`): on PostgreSQL with psycopg 3 a
  relay LISTENs for the outbox's NOTIFY; elsewhere (MySQL, MariaDB, SQLite) it polls;
* **reading what another transaction just committed** (:meth:`SqlDialect.committed_read`):
  on MySQL/MariaDB's REPEATABLE READ, a locking read.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from sqlalchemy import (
    ARRAY,
    Column,
    Connection,
    Engine,
    Executable,
    Insert,
    Select,
    Table,
    any_,
    bindparam,
    insert,
    text,
    tuple_,
)
from sqlalchemy.engine import Compiled, Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement, ColumnElement

from txmq.config import describe
from txmq.errors import DatabaseUnavailable
from txmq.sql.tables import NOTIFY_CHANNEL

log = logging.getLogger("txmq.sql")

#: DBAPI parameter styles taking ``%`` placeholders (every synchronous PostgreSQL driver).
_PERCENT_PARAMSTYLES = frozenset({"format", "pyformat"})

#: Run first in a transaction that claims from a queue table on PostgreSQL, for that
#: transaction only. A queue's statistics are often stale: a table that was nearly empty
#: at the last ANALYZE holds a backlog now. The planner then sorts the whole backlog for
#: each claim and scans the whole table to mark a batch (12 ms and 8 ms per 1000 with 20k
#: outbox records, growing with the table), where the partial and primary-key indexes read
#: only the batch (1.7 ms).
_INDEX_ACCESS_ONLY = (
    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true)"
)


class Waiter(Protocol):
    """What an idle relay lane waits on until there may be work."""

    def wait(self, seconds: float) -> None:
        """Return after ``seconds``, or earlier when woken or stopped.

        Raises:
            DatabaseUnavailable: the connection it listens on failed (reopened next time).
        """

    def close(self) -> None:
        """Release what it holds (a listening connection); the next wait opens it again."""


class SqlDialect:
    """The generic strategy: no row locks, no ``ON CONFLICT``, SQLAlchemy for every
    statement, and waiting by sleeping. Subclasses override what their database does better.

    Attributes:
        name: the SQLAlchemy dialect name (``postgresql``, ``sqlite``, ``mysql`` ...).
        skip_locked: claims lock their rows with ``FOR UPDATE SKIP LOCKED`` (and row locks
            keep check-backs away from a record); False: one writer at a time.
        direct_cursor: :class:`DirectStatement` runs on the DBAPI cursor.
    """

    skip_locked = False
    direct_cursor = False

    def __init__(self, name: str) -> None:
        self.name = name

    def claim_lock(self, query: Select[Any]) -> Select[Any]:
        """``query`` locking the rows it returns and skipping rows others have locked, where
        the database can; unchanged elsewhere."""
        return query.with_for_update(skip_locked=True) if self.skip_locked else query

    def after_in_group(
        self,
        query: Select[Any],
        group: Column[Any],
        seq: Column[Any],
        *,
        group_value: Any,
        after: Any,
    ) -> Select[Any]:
        """``query`` limited to the rows of ``group_value`` whose ``seq`` is above ``after``,
        in ``seq`` order, for an index on ``(group, seq)``."""
        return query.where(group == group_value, seq > after).order_by(seq)

    def row_lock(self, query: Select[Any]) -> Select[Any]:
        """``query`` locking the rows it returns (waiting for them), where the database has
        row locks; unchanged elsewhere."""
        return query.with_for_update() if self.skip_locked else query

    def committed_read(self, query: Select[Any]) -> Select[Any]:
        """``query`` reading the latest committed rows, even in a transaction that has read
        before: unchanged where a statement sees every commit before it (READ COMMITTED,
        PostgreSQL's default; SQLite's one writer)."""
        return query

    def queue_engine(self, engine: Engine) -> Engine:
        """``engine`` as txmq's own queue work (claims, marks, releases, purges) uses it:
        unchanged where the default isolation takes no gap locks."""
        return engine

    def in_values(self, column: Column[Any], name: str) -> ColumnElement[bool]:
        """``column IN :name``, the parameter a list of values."""
        return column.in_(bindparam(name, expanding=True))

    def index_scans_only(self, connection: Connection) -> None:
        """Make the rest of ``connection``'s transaction read a queue table through its
        indexes, whatever its statistics say (a no-op where the planner needs no help)."""

    def insert_ignoring_duplicates(self, table: Table) -> Insert | None:
        """``INSERT .. ON CONFLICT DO NOTHING`` on ``table``, or None where the database has
        none (a duplicate then raises, and is caught in a savepoint)."""
        return None

    def unnest_insert(
        self,
        dialect: Dialect,
        table: Table,
        key: Column[Any],
        varying: Sequence[str],
        shared: Sequence[str],
    ) -> Executable | None:
        """One statement inserting many rows, skipping duplicates and returning ``key`` of
        the new rows; None where the database has no arrays.

        Its parameters: ``v0``, ``v1`` .. an array per ``varying`` column, in that order,
        and ``s0``, ``s1`` .. a value per ``shared`` column (the same in every row).
        """
        return None

    def waiter(self, engine: Engine, stop: threading.Event) -> Waiter:
        """What an idle relay lane of ``engine`` waits on; ``stop`` ends any wait early."""
        return _Sleep(stop)


class _SQLite(SqlDialect):
    def insert_ignoring_duplicates(self, table: Table) -> Insert | None:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()


class _MySQL(SqlDialect):
    skip_locked = True

    def queue_engine(self, engine: Engine) -> Engine:
        """READ COMMITTED (same pool): under InnoDB's REPEATABLE READ a claim also locks
        the rows it skips past and the gaps between index entries, so one relay lane's
        claim blocked another's mark and a producer's insert, and lanes deadlocked (1213)
        or timed out (1205) marking a batch SENT. SKIP LOCKED works the same at either."""
        return engine.execution_options(isolation_level="READ COMMITTED")

    def committed_read(self, query: Select[Any]) -> Select[Any]:
        """A locking read (``LOCK IN SHARE MODE``): under InnoDB's default REPEATABLE READ a
        plain SELECT reads the transaction's first snapshot, which misses a row committed
        by the transaction an INSERT just waited for."""
        return query.with_for_update(read=True)


class _PostgreSQL(SqlDialect):
    skip_locked = True

    def __init__(self, name: str, *, direct_cursor: bool) -> None:
        super().__init__(name)
        self.direct_cursor = direct_cursor

    def in_values(self, column: Column[Any], name: str) -> ColumnElement[bool]:
        """``column = ANY(:name)``: one parameter however many values, so the statement's
        text, and the server's plan of it, never change."""
        return column == any_(bindparam(name, type_=ARRAY(column.type)))

    def after_in_group(
        self,
        query: Select[Any],
        group: Column[Any],
        seq: Column[Any],
        *,
        group_value: Any,
        after: Any,
    ) -> Select[Any]:
        """``(group, seq) > (:group, :after) AND group <= :group ORDER BY group, seq``.

        The same rows as ``group = :group AND seq > :after ORDER BY seq``, in a form only an
        index on ``(group, seq)`` returns in order. Written the plain way, the planner may
        walk the primary key in ``seq`` order instead, filtering. It did whenever the
        statistics put most READY records in one group and the claim was for another: it
        expected a batch within the first pages and read the whole table (in the latency
        benchmark, 8-96 ms a claim, where the READY index answers in under 0.5 ms). The
        range form keeps the claim on the READY index, starting at the group's first
        record above ``after``.
        """
        return query.where(
            tuple_(group, seq) > tuple_(group_value, after), group <= group_value
        ).order_by(group, seq)

    def index_scans_only(self, connection: Connection) -> None:
        # Once per relay pass: on the cursor, not through exec_driver_sql (half the
        # claim's CPU went to SQLAlchemy's execution of this statement).
        _INDEX_ACCESS_ONLY_STATEMENT.run(connection, {})

    def insert_ignoring_duplicates(self, table: Table) -> Insert | None:
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table).on_conflict_do_nothing()

    def unnest_insert(
        self,
        dialect: Dialect,
        table: Table,
        key: Column[Any],
        varying: Sequence[str],
        shared: Sequence[str],
    ) -> Executable | None:
        """One statement with an array parameter per varying column: its text never changes
        with the number of rows, so the driver and the server reuse its plan (a multi-row
        VALUES list would be new text per size)."""
        # Text, not Core: SQLAlchemy has no construct for unnest over typed arrays.
        quote = dialect.identifier_preparer
        columns = [*varying, *shared]
        arrays = ", ".join(
            f"CAST(:v{n} AS {table.c[name].type.compile(dialect=dialect)}[])"
            for n, name in enumerate(varying)
        )
        aliases = ", ".join(f"v{n}" for n in range(len(varying)))
        selected = [f"u.v{n}" for n in range(len(varying))] + [f":s{n}" for n in range(len(shared))]
        return text(
            f"INSERT INTO {quote.format_table(table)} "
            f"({', '.join(quote.quote(name) for name in columns)}) "
            f"SELECT {', '.join(selected)} FROM unnest({arrays}) AS u({aliases}) "
            f"ON CONFLICT DO NOTHING RETURNING {quote.quote(key.name)}"
        ).columns(key)

    def waiter(self, engine: Engine, stop: threading.Event) -> Waiter:
        return _Listen(engine, stop)


def dialect_of(dialect: Dialect) -> SqlDialect:
    """The strategy for a SQLAlchemy dialect (``engine.dialect``, ``connection.dialect``)."""
    return _strategy(dialect.name, dialect.paramstyle)


@functools.cache
def _strategy(name: str, paramstyle: str) -> SqlDialect:
    if name == "postgresql":
        return _PostgreSQL(name, direct_cursor=paramstyle in _PERCENT_PARAMSTYLES)
    if name == "sqlite":
        return _SQLite(name)
    if name in ("mysql", "mariadb"):
        return _MySQL(name)
    return SqlDialect(name)


class DirectStatement:
    """A statement that runs on the DBAPI cursor where the dialect allows, and through
    ``connection.execute`` elsewhere.

    For statements that run thousands of times a second: SQLAlchemy's work per execution
    (cache key, execution context, result wrapping) costs about as much CPU as the driver's
    own round trip. The statement is compiled once per SQLAlchemy dialect and runs in the
    connection's transaction. Engine events (``before_cursor_execute``) do not see it.

    Args:
        statement: a Core statement with named bind parameters.
        column_keys: for an INSERT, the columns its parameters give (the others keep their
            defaults).
    """

    def __init__(self, statement: Executable, *, column_keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self._column_keys = list(column_keys) if column_keys is not None else None
        # Per SQLAlchemy dialect: None where it takes no direct path, else how to run it.
        self._compiled: dict[Dialect, _Direct | None] = {}

    def sql(self, dialect: Dialect) -> str:
        """The SQL text the cursor runs on ``dialect``."""
        return str(self._compile(dialect))

    def run(
        self, connection: Connection, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> Sequence[Any] | None:
        """The rows of the statement (None if it returns none). A sequence of parameter sets
        runs it once per set and returns no rows.

        Raises:
            sqlalchemy.exc.DBAPIError: the driver's error, wrapped as ``connection.execute``
                would wrap it.
        """
        dialect = connection.dialect
        try:
            direct = self._compiled[dialect]
        except KeyError:
            direct = self._compiled[dialect] = self._direct(dialect)
        if direct is None:
            result = connection.execute(self.statement, params)
            return result.all() if result.returns_rows else None
        sql, positions, returns_rows = direct
        many = not isinstance(params, Mapping)
        arguments: Any = params
        if positions is not None:
            if isinstance(params, Mapping):
                arguments = tuple(params[name] for name in positions)
            else:
                arguments = [tuple(p[name] for name in positions) for p in params]
        # The pool's DBAPI connection, not the driver's own: under an asyncio driver (an
        # AsyncSession through run_sync) its cursor is the adapted, synchronous one.
        cursor = connection.connection.cursor()
        error: type[Exception] = dialect.loaded_dbapi.Error
        try:
            if many:
                cursor.executemany(sql, arguments)
                return None
            cursor.execute(sql, arguments)
            # Known from the statement: the driver's cursor.description costs as much as the
            # rest of this method.
            return cursor.fetchall() if returns_rows else None
        except error as exc:
            raise DBAPIError.instance(
                sql,
                arguments,
                exc,
                error,
                hide_parameters=connection.engine.hide_parameters,
                dialect=dialect,
            ) from exc
        finally:
            cursor.close()

    def _compile(self, dialect: Dialect) -> Compiled:
        assert isinstance(self.statement, ClauseElement)  # every statement txmq runs is one
        return self.statement.compile(
            dialect=dialect,
            column_keys=self._column_keys,
            for_executemany=self._column_keys is not None,
        )

    def _direct(self, dialect: Dialect) -> _Direct | None:
        if not dialect_of(dialect).direct_cursor:
            return None
        compiled = self._compile(dialect)
        assert isinstance(compiled, SQLCompiler)  # a statement, not DDL
        positions = tuple(compiled.positiontup or ()) if dialect.positional else None
        returns_rows = self.statement.is_select or bool(compiled.effective_returning)
        return _Direct(str(compiled), positions, returns_rows)


class _Direct(NamedTuple):
    """How a :class:`DirectStatement` runs on one dialect's cursor."""

    sql: str
    #: The parameters' names in placeholder order, for a positional parameter style.
    positions: tuple[str, ...] | None
    returns_rows: bool


class UniqueInsert:
    """Insert rows into ``table`` unless their unique key is there already, and tell which
    were new. A duplicate is no error and does not abort the caller's transaction.

    On PostgreSQL and MySQL an insert that meets a key written by a still-running
    transaction waits for that transaction to end.

    Args:
        table: the table.
        key: the column that tells rows apart in :meth:`many`'s answer (any column of a
            unique constraint the inserts may hit).
        columns: the columns every row gives (the others keep their defaults).
    """

    def __init__(self, table: Table, *, key: Column[Any], columns: Sequence[str]) -> None:
        self.table = table
        self.key = key
        self.columns = tuple(columns)
        # Per dialect name: the ON CONFLICT statement, or None where there is none.
        self._ignoring: dict[str, DirectStatement | None] = {}
        self._unnest: dict[tuple[str, tuple[str, ...], tuple[str, ...]], DirectStatement] = {}

    def one(self, connection: Connection, row: Mapping[str, Any]) -> bool:
        """Insert ``row`` (every one of :attr:`columns`); False if its key exists."""
        statement = self._ignoring_statement(connection)
        if statement is not None:
            # RETURNING, not rowcount: drivers report -1 for INSERT .. ON CONFLICT DO NOTHING.
            return bool(statement.run(connection, row))
        try:
            with connection.begin_nested():
                connection.execute(insert(self.table), dict(row))
        except IntegrityError:
            return False
        return True

    def many(
        self,
        connection: Connection,
        rows: Sequence[Mapping[str, Any]],
        *,
        shared: Mapping[str, Any] | None = None,
    ) -> set[Any]:
        """Insert ``rows`` (each completed by the ``shared`` values); return the :attr:`key`
        values of the rows that were new."""
        if not rows:
            return set()
        shared = shared or {}
        varying = tuple(rows[0])
        unnest = self._unnest_statement(connection, varying, tuple(shared))
        if unnest is not None:
            params = {f"v{n}": [row[name] for row in rows] for n, name in enumerate(varying)}
            params |= {f"s{n}": value for n, value in enumerate(shared.values())}
            return {found for (found,) in unnest.run(connection, params) or ()}
        statement = self._ignoring_statement(connection)
        full = [{**row, **shared} for row in rows]
        if statement is None:
            return {row[self.key.name] for row in full if self.one(connection, row)}
        # A list of parameter sets through SQLAlchemy, which batches the rows into multi-row
        # INSERTs itself ("insertmanyvalues") and hands back every RETURNING row.
        result = connection.execute(statement.statement, full)
        return set(result.scalars())

    def _ignoring_statement(self, connection: Connection) -> DirectStatement | None:
        name = connection.dialect.name
        try:
            return self._ignoring[name]
        except KeyError:
            pass
        found = dialect_of(connection.dialect).insert_ignoring_duplicates(self.table)
        statement = (
            DirectStatement(found.returning(self.key), column_keys=self.columns)
            if found is not None
            else None
        )
        self._ignoring[name] = statement
        return statement

    def _unnest_statement(
        self, connection: Connection, varying: tuple[str, ...], shared: tuple[str, ...]
    ) -> DirectStatement | None:
        cache_key = (connection.dialect.name, varying, shared)
        if cache_key not in self._unnest:
            found = dialect_of(connection.dialect).unnest_insert(
                connection.dialect, self.table, self.key, varying, shared
            )
            if found is None:
                return None
            self._unnest[cache_key] = DirectStatement(found)
        return self._unnest[cache_key]


class _Sleep:
    """Waiting without a wake-up: a plain sleep that ``stop`` cuts short."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop

    def wait(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def close(self) -> None:
        """Nothing to release."""


#: Queued notifications a wake-up takes off the connection at most (they come much more
#: slowly than they are read; the bound only makes the loop's end evident).
_DRAIN_AT_MOST = 10_000


def _next_notification(driver: Any, timeout: float) -> bool:
    """Whether a notification came to ``driver`` (psycopg 3) within ``timeout`` (0: one
    that is already there)."""
    # The generator holds the connection's lock until it is closed: close it at once.
    notifications = driver.notifies(timeout=timeout, stop_after=1)
    try:
        return next(notifications, None) is not None
    finally:
        notifications.close()


class _Listen:
    """On PostgreSQL with psycopg 3, a connection that LISTENs for the NOTIFY of committed
    stages; with another driver, a plain sleep.

    The connection is opened at the first wait and again at the first wait after a failure
    (:meth:`close`): a database restart cuts it like any other. Such a wait returns at once,
    as if woken: what was committed before the LISTEN began notified nobody.
    """

    def __init__(self, engine: Engine, stop: threading.Event) -> None:
        self._engine = engine
        self._stop = stop
        self._listening = True
        self._driver: Any = None

    def wait(self, seconds: float) -> None:
        new = self._driver is None and self._listening
        driver = self._connection()
        if driver is None:
            self._stop.wait(seconds)
            return
        if new:
            # A stage committed before the LISTEN notified nobody: return as if woken, so
            # that a pass looks for it now rather than after ``seconds``.
            return
        deadline = time.monotonic() + seconds
        try:
            # Short slices so that stop() is noticed quickly.
            while not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if _next_notification(driver, min(left, 0.25)):
                    # One staging transaction, one NOTIFY: those queued behind it were
                    # committed before the pass this wake-up starts, which claims them
                    # all. Each left queued would wake the relay for a pass that finds
                    # nothing (measured: about one empty pass per record).
                    for _ in range(_DRAIN_AT_MOST):
                        if not _next_notification(driver, 0):
                            break
                    return
        except Exception as exc:
            self.close()
            raise DatabaseUnavailable(f"LISTEN connection lost: {describe(exc)}") from exc
        except BaseException:
            self.close()
            raise

    def _connection(self) -> Any:
        if self._driver is not None or not self._listening:
            return self._driver
        raw: Any = self._engine.raw_connection()
        driver = getattr(raw, "driver_connection", None)
        if driver is None or not hasattr(driver, "notifies"):
            raw.close()
            self._listening = False  # not psycopg 3: poll
            return None
        raw.detach()  # this connection LISTENs as long as it works; keep it out of the pool
        try:
            driver.autocommit = True
            driver.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except BaseException:
            driver.close()
            raise
        self._driver = driver
        return driver

    def close(self) -> None:
        driver, self._driver = self._driver, None
        if driver is not None:
            try:
                driver.close()
            except Exception:  # a broken connection may fail to close; nothing to release
                log.debug("closing the LISTEN connection failed", exc_info=True)


_INDEX_ACCESS_ONLY_STATEMENT = DirectStatement(text(_INDEX_ACCESS_ONLY))
