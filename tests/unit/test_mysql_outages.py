"""What a MariaDB/MySQL restart raises counts as an outage (the loops back off and resume),
through SQLAlchemy's wrapper or bare, and other MySQL errors do not."""

from __future__ import annotations

import pymysql
import pytest
from sqlalchemy.exc import OperationalError

from txmq.database_errors import is_lock_conflict, is_outage


def _wrapped(errno: int, text: str) -> OperationalError:
    # A statement ran, and SQLAlchemy did not mark the connection invalidated.
    return OperationalError("UPDATE ...", {}, pymysql.err.OperationalError(errno, text))


@pytest.mark.parametrize(
    ("errno", "text"),
    [
        (1053, "Server shutdown in progress"),
        (2013, "Lost connection to MySQL server during query"),
        (2006, "MySQL server has gone away"),
        (1927, "Connection was killed"),
        (4031, "The client was disconnected by the server because of inactivity"),
    ],
)
def test_a_server_going_away_is_an_outage(errno: int, text: str) -> None:
    assert is_outage(_wrapped(errno, text))
    assert is_outage(pymysql.err.OperationalError(errno, text))
    assert not is_lock_conflict(_wrapped(errno, text))


def test_other_mysql_errors_and_plain_exceptions_are_not() -> None:
    assert not is_outage(_wrapped(1062, "Duplicate entry"))
    assert not is_outage(_wrapped(1213, "Deadlock found"))
    assert not is_outage(ValueError(2013))
