"""The application's database objects as txmq takes them: engines, sessions, URLs.

* txmq runs its own statements (relay, check-back, consumer workers) in threads, so the
  engine it is given must be synchronous. An application on SQLAlchemy's asyncio calls
  txmq's session-bound methods through ``AsyncSession.run_sync``, which hands them a
  synchronous ``Session`` on the same transaction.
* Two URLs name the same database when backend, host, port, database and user agree,
  whatever the driver: a ``postgresql+asyncpg`` session and txmq's ``postgresql+psycopg``
  engine share one outbox.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from sqlalchemy import URL, Connection, Engine, create_engine
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.orm import Session

from txmq.config import redact
from txmq.errors import ConfigurationError, MissingDependency

RUN_SYNC_HINT = (
    "with an AsyncSession, call it through run_sync, e.g. "
    "`await session.run_sync(lambda s: producer.stage(s, message))`"
)

#: Ports a URL without one means, by backend.
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
#: Extras of txmq that install a database driver, by the driver's top-level module.
_DRIVER_EXTRAS = {"psycopg": "postgres", "pymysql": "mysql"}


def require_sync_engine(engine: object, owner: str) -> Engine:
    """Return ``engine`` if it is a synchronous :class:`~sqlalchemy.Engine`.

    Raises:
        ConfigurationError: an ``AsyncEngine``, or the ``sync_engine`` of one (its driver
            only works inside asyncio), or not an engine at all.
    """
    if isinstance(engine, Engine) and not engine.dialect.is_async:
        return engine
    raise ConfigurationError(
        f"{owner} needs a synchronous SQLAlchemy Engine (create_engine), not "
        f"{type(engine).__name__}{' on an asyncio driver' if isinstance(engine, Engine) else ''}"
        ": txmq runs its own statements in threads. Give it create_engine() on the same "
        "database (e.g. postgresql+psycopg://...); asyncio sessions still stage through "
        "AsyncSession.run_sync"
    )


def session_connection(session: object, operation: str) -> Connection:
    """The connection of ``session``'s transaction (begun if need be).

    Run it inside :func:`outside_run_sync_is_an_error`: a session bound to an asyncio
    driver can only connect inside ``AsyncSession.run_sync``.

    Raises:
        ConfigurationError: ``session`` is not a synchronous ``Session`` (e.g. an
            ``AsyncSession`` passed directly).
    """
    if not isinstance(session, Session):
        raise ConfigurationError(
            f"{operation} needs a synchronous Session, not {type(session).__name__}; "
            f"{RUN_SYNC_HINT}"
        )
    return session.connection()


@contextlib.contextmanager
def outside_run_sync_is_an_error(operation: str) -> Iterator[None]:
    """Turn SQLAlchemy's ``MissingGreenlet`` (an asyncio driver used from plain synchronous
    code) into a :class:`ConfigurationError` that says how to call ``operation``."""
    try:
        yield
    except MissingGreenlet as exc:
        raise ConfigurationError(
            f"{operation} ran on an asyncio driver outside AsyncSession.run_sync; {RUN_SYNC_HINT}"
        ) from exc


def database_identity(url: URL) -> tuple[object, ...]:
    """What identifies the database ``url`` names: backend, host, port, database, user."""
    backend = url.get_backend_name()
    database = url.database
    if backend == "sqlite" and database and database != ":memory:":
        database = os.path.realpath(database)
    host = url.host or url.query.get("host")
    return backend, host, url.port or _DEFAULT_PORTS.get(backend), database, url.username


def same_database(a: URL, b: URL) -> bool:
    """Whether ``a`` and ``b`` name one database, through whichever drivers."""
    return database_identity(a) == database_identity(b)


def open_engine(url: str) -> Engine:
    """``create_engine(url)`` for txmq's command line.

    Raises:
        MissingDependency: the URL's driver is not installed (naming the txmq extra that
            installs it, e.g. ``pip install 'txmq[postgres]'``).
    """
    try:
        return create_engine(url)
    except ModuleNotFoundError as exc:
        module = (exc.name or "").partition(".")[0]
        extra = _DRIVER_EXTRAS.get(module)
        install = f"'txmq[{extra}]'" if extra else module
        raise MissingDependency(
            f"the database URL {redact(url)} needs the {module} driver: pip install {install}"
        ) from exc
