"""Throwaway databases with txmq's tables, for the pytest plugin's database fixtures."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from txmq.config import redact
from txmq.sql.schema import create_schema
from txmq.testing.provision.common import ProvisionError

#: Every database :func:`fresh_postgres_database` and :func:`fresh_mariadb_database` create
#: is named ``<prefix><hex>``.
DATABASE_PREFIX = "txmq_test_"


@contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """Create a new database on ``server_url``'s PostgreSQL server, with txmq's default
    tables (outbox, marker, inbox and the relays' NOTIFY trigger); yield its URL; drop it.

    The drop closes connections still open on it, e.g. those of a relay the test left
    running.

    Raises:
        ProvisionError: the server is unreachable or the user may not create databases
            (the URL in the message is redacted).
    """

    def drop(connection: Connection, name: str) -> None:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    with _fresh_database(
        server_url,
        create='CREATE DATABASE "{name}"',
        needs="CREATEDB",
        drop=drop,
    ) as url:
        yield url


@contextmanager
def fresh_mariadb_database(server_url: str) -> Iterator[str]:
    """Create a new database on ``server_url``'s MariaDB or MySQL server, with txmq's
    default tables (outbox, marker, inbox); yield its URL; drop it.

    Before the drop, the connections still open on it (e.g. those of a relay the test left
    running) are killed: their metadata locks would hold the drop back.

    Raises:
        ProvisionError: the server is unreachable or the user may not create databases
            (the URL in the message is redacted).
    """

    def drop(connection: Connection, name: str) -> None:
        sessions = connection.exec_driver_sql(
            "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
            (name,),
        ).scalars()
        for session in list(sessions):
            with contextlib.suppress(DBAPIError):  # ended meanwhile
                connection.exec_driver_sql(f"KILL {int(session)}")
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")

    with _fresh_database(
        server_url,
        create="CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        needs="the CREATE privilege",
        drop=drop,
    ) as url:
        yield url


@contextmanager
def _fresh_database(
    server_url: str, *, create: str, needs: str, drop: Callable[[Connection, str], None]
) -> Iterator[str]:
    """Create a database with ``create`` (formatted with its ``name``) and txmq's default
    tables; yield its URL; ``drop`` it. ``needs`` names the privilege a refusal lacks."""
    server = make_url(server_url)
    name = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:16]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(create.format(name=name))
        except DBAPIError as exc:
            raise ProvisionError(
                f"cannot create a test database on {redact(server_url)} (its user needs "
                f"{needs}): {redact(str(exc.orig))}"
            ) from None
        url = server.set(database=name).render_as_string(hide_password=False)
        try:
            engine = create_engine(url, pool_size=1)
            try:
                create_schema(engine)
            finally:
                engine.dispose()
            yield url
        finally:
            with admin.connect() as connection:
                drop(connection, name)
    finally:
        admin.dispose()


def sqlite_engine(path: Path) -> Engine:
    """An engine on a SQLite file at ``path``, with txmq's default tables created."""
    engine = create_engine(f"sqlite:///{path}")
    create_schema(engine)
    return engine
