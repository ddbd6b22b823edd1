"""Fixtures of the fault tests: a private PostgreSQL and a private MariaDB that a test may
restart.

The shared test database is never restarted; every fault test that takes the database away
gets this server instead (one per session, started again before each test).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from txmq.testing.provision.processes import RestartableMariaDB, RestartablePostgres


@pytest.fixture(scope="session")
def _private_server() -> Iterator[RestartablePostgres]:
    with RestartablePostgres() as server:
        yield server


@pytest.fixture
def private_postgres(_private_server: RestartablePostgres) -> RestartablePostgres:
    """A PostgreSQL private to the fault tests, running; ``restart()`` it at will."""
    _private_server.start_server()  # a failed test may have left it stopped
    return _private_server


@pytest.fixture(scope="session")
def _private_mariadb_server() -> Iterator[RestartableMariaDB]:
    with RestartableMariaDB() as server:
        yield server


@pytest.fixture
def private_mariadb(_private_mariadb_server: RestartableMariaDB) -> RestartableMariaDB:
    """A MariaDB private to the fault tests, running; ``restart()`` it at will."""
    _private_mariadb_server.start_server()  # a failed test may have left it stopped
    return _private_mariadb_server
