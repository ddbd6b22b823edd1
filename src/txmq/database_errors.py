"""Telling database driver errors apart: an outage that passes, or a refusal that does not.

Background loops reconnect after an outage (connection refused or lost, server restarting
or failing over) and stop for good on a refusal (bad password, no such role or database),
which only a change of configuration can fix. Works on SQLAlchemy's wrapped errors and on
the driver's own, without importing a driver. A lost lock conflict (deadlock, lock wait
timeout) is neither: the transaction is run again (:func:`retry_lock_conflicts`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from txmq.config import describe, redact
from txmq.errors import DatabaseRefused

log = logging.getLogger("txmq.sql")

# What servers say when they refuse a client for good (PostgreSQL, MySQL/MariaDB). Drivers
# give no SQLSTATE for errors raised while connecting, so the text is all there is.
_REFUSALS = (
    "password authentication failed",
    "authentication failed for user",
    "no password supplied",
    "no pg_hba.conf entry",
    "does not exist",  # role "x" / database "x" does not exist
    "access denied for user",
    "unknown database",
)
# SQLSTATEs of a connection that is gone or cannot be had now: class 08 (connection
# exception) and 57P01-57P03 (server shutting down, crashed, starting up).
_OUTAGE_SQLSTATES = ("57P01", "57P02", "57P03")
# MySQL/MariaDB error numbers of a server going away or restarting: 1053 server shutdown
# in progress (a statement running as the server stops), 1927 connection killed, 2002/2003
# cannot connect, 2006 server has gone away, 2013 lost connection during a query, 2055
# lost connection (system error), 4031 disconnected by the server. SQLAlchemy marks only
# some of them as invalidating, and none when the error comes from a commit or rollback.
_OUTAGE_ERRNOS = (1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031)


def _connecting(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while opening a connection (no statement was running)."""
    return isinstance(exc, DBAPIError) and exc.statement is None


def _driver_error(exc: BaseException) -> BaseException:
    return exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc


def refusal(exc: BaseException) -> DatabaseRefused | None:
    """The :class:`DatabaseRefused` that ``exc`` stands for, if it is a refusal to connect.

    The message is the server's reason, without the password.
    """
    if not isinstance(exc, OperationalError | InterfaceError) or not _connecting(exc):
        return None
    text = str(_driver_error(exc))
    if not any(phrase in text.lower() for phrase in _REFUSALS):
        return None
    reason = text.rsplit("FATAL:", 1)[-1].strip().splitlines()[0].strip()
    refused = DatabaseRefused(f"the database refused the connection: {redact(reason)}")
    refused.__cause__ = exc
    return refused


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from, is a lost or refused connection to
    the database (something that passes when the server is back)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_outage_itself(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_outage_itself(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc, OperationalError | InterfaceError) and _connecting(exc):
            return refusal(exc) is None
    driver = _driver_error(exc)
    sqlstate = getattr(driver, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith("08") or sqlstate in _OUTAGE_SQLSTATES
    # PyMySQL and mysqlclient: args == (errno, message).
    args: tuple[object, ...] = getattr(driver, "args", ())
    return _is_mysql_error(exc, driver) and bool(args) and args[0] in _OUTAGE_ERRNOS


def _is_mysql_error(exc: BaseException, driver: BaseException) -> bool:
    """Whether ``driver`` is a DBAPI error (wrapped by SQLAlchemy or not), whose first
    argument is then an error number, not any exception's first argument."""
    return isinstance(exc, DBAPIError) or type(driver).__module__.split(".")[0] in (
        "pymysql",
        "MySQLdb",
    )


# A transaction that lost a lock conflict, which running it again settles: MySQL/MariaDB's
# deadlock (1213: InnoDB rolled the whole transaction back) and lock wait timeout (1205:
# the statement was rolled back), PostgreSQL's deadlock_detected (40P01).
_LOCK_CONFLICT_ERRNOS = (1213, 1205)
_LOCK_CONFLICT_SQLSTATES = ("40P01",)

#: How often :func:`retry_lock_conflicts` runs a transaction before letting the conflict pass.
LOCK_CONFLICT_ATTEMPTS = 5

_T = TypeVar("_T")


def is_lock_conflict(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised while handling, is a deadlock or lock wait
    timeout: the transaction lost a race for a lock, and nothing about its data is known
    from it (it is no outcome).

    The chain counts: after an InnoDB deadlock inside a savepoint, the rollback to that
    savepoint fails too (the deadlock took the whole transaction, savepoint included).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_lock_conflict_itself(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_lock_conflict_itself(exc: BaseException) -> bool:
    driver = _driver_error(exc)
    sqlstate = getattr(driver, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate in _LOCK_CONFLICT_SQLSTATES
    # PyMySQL and mysqlclient: args == (errno, message).
    args: tuple[object, ...] = getattr(driver, "args", ())
    return isinstance(exc, DBAPIError) and bool(args) and args[0] in _LOCK_CONFLICT_ERRNOS


def retry_lock_conflicts(transaction: Callable[[], _T], what: str) -> _T:
    """Run ``transaction`` (a whole transaction: it begins and ends inside) again while it
    loses a lock conflict (:func:`is_lock_conflict`), up to :data:`LOCK_CONFLICT_ATTEMPTS`.

    Raises:
        Exception: whatever ``transaction`` raised that is no lock conflict, at once; a
            lock conflict of the last attempt.
    """
    for attempt in range(1, LOCK_CONFLICT_ATTEMPTS + 1):
        try:
            return transaction()
        except Exception as exc:  # a conflict may come wrapped (a handler's error)
            if attempt == LOCK_CONFLICT_ATTEMPTS or not is_lock_conflict(exc):
                raise
            log.info(
                "%s lost a lock conflict (attempt %d), running it again: %s",
                what,
                attempt,
                describe(exc),
            )
    raise AssertionError("unreachable")  # the last attempt returns or raises
