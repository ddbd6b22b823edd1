"""Fixtures of the fault tests: a private PostgreSQL that a test may restart.

The shared test database is never restarted; every fault test that takes the database away
gets this server instead (one per session, started again before each test).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from txmq.testing.provision.processes import RestartablePostgres


@pytest.fixture(scope="session")
def _private_server() -> Iterator[RestartablePostgres]:
    with RestartablePostgres() as server:
        yield server


@pytest.fixture
def private_postgres(_private_server: RestartablePostgres) -> RestartablePostgres:
    """A PostgreSQL private to the fault tests, running; ``restart()`` it at will."""
    _private_server.start_server()  # a failed test may have left it stopped
    return _private_server
