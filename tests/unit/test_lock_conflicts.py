"""Lost lock conflicts (deadlock, lock wait timeout) are told apart from other database
errors, through wrappers, and the transaction is run again only for them."""

from __future__ import annotations

import pymysql
import pytest
from sqlalchemy.exc import OperationalError

from txmq.database_errors import LOCK_CONFLICT_ATTEMPTS, is_lock_conflict, retry_lock_conflicts


def _wrapped(errno: int, text: str) -> OperationalError:
    return OperationalError("INSERT ...", {}, pymysql.err.OperationalError(errno, text))


@pytest.mark.parametrize("errno", [1213, 1205])
def test_deadlocks_and_lock_wait_timeouts_are_lock_conflicts(errno: int) -> None:
    assert is_lock_conflict(_wrapped(errno, "lost"))


def test_other_errors_are_not() -> None:
    assert not is_lock_conflict(_wrapped(1062, "Duplicate entry"))
    assert not is_lock_conflict(_wrapped(2013, "Lost connection"))
    assert not is_lock_conflict(ValueError(1213))


def test_a_failed_savepoint_rollback_after_a_deadlock_is_one() -> None:
    """InnoDB's deadlock took the savepoint along: the ROLLBACK TO SAVEPOINT that follows
    fails with 1305 while the deadlock is being handled."""

    def rollback_after_deadlock() -> None:
        try:
            raise _wrapped(1213, "Deadlock found")
        except OperationalError:
            raise _wrapped(1305, "SAVEPOINT sa_savepoint_1 does not exist") from None

    with pytest.raises(OperationalError, match="1305") as caught:
        rollback_after_deadlock()
    # `from None` hides the context from tracebacks, but it is still there.
    assert is_lock_conflict(caught.value)


def test_the_transaction_runs_again_until_it_wins() -> None:
    calls: list[int] = []

    def transaction() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _wrapped(1213, "Deadlock found")
        return "done"

    assert retry_lock_conflicts(transaction, "test") == "done"
    assert len(calls) == 3


def test_other_errors_and_the_last_conflict_pass() -> None:
    calls: list[int] = []

    def duplicate() -> None:
        calls.append(1)
        raise _wrapped(1062, "Duplicate entry")

    with pytest.raises(OperationalError, match="Duplicate"):
        retry_lock_conflicts(duplicate, "test")
    assert len(calls) == 1

    def always() -> None:
        calls.append(1)
        raise _wrapped(1205, "Lock wait timeout exceeded")

    with pytest.raises(OperationalError, match="Lock wait"):
        retry_lock_conflicts(always, "test")
    assert len(calls) == 1 + LOCK_CONFLICT_ATTEMPTS
