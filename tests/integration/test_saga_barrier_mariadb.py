"""The branch barrier on a real MariaDB (InnoDB, REPEATABLE READ): a compensation, or a
duplicate action, whose transaction read before the action committed still sees the
action's row (a consumer batch runs several handlers in one transaction, so the first read
of the batch takes InnoDB's snapshot)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, MetaData, Table, func, select
from sqlalchemy.orm import Session

from txmq.saga import Barrier, BarrierOutcome, make_barrier_table

pytestmark = pytest.mark.database


def _barrier(engine: Engine) -> tuple[Barrier, Table]:
    metadata = MetaData()
    table = make_barrier_table(metadata)
    metadata.create_all(engine)
    return Barrier(table), table


def _apply_action(engine: Engine, barrier: Barrier) -> None:
    with Session(engine) as acting, acting.begin():
        result = barrier.action(acting, "saga-1", "payment", lambda: {"charged": 10})
    assert result.outcome is BarrierOutcome.APPLIED


def test_a_compensation_after_an_earlier_read_undoes_the_action(txmq_mysql_engine: Engine) -> None:
    barrier, table = _barrier(txmq_mysql_engine)
    refunded: list[str] = []
    with Session(txmq_mysql_engine) as compensating, compensating.begin():
        # What an earlier handler of the same batch may do: InnoDB's snapshot is taken here.
        compensating.execute(select(func.count()).select_from(table)).scalar_one()
        _apply_action(txmq_mysql_engine, barrier)
        result = barrier.compensation(
            compensating, "saga-1", "payment", lambda: refunded.append("saga-1")
        )
    assert result.outcome is BarrierOutcome.APPLIED
    assert refunded == ["saga-1"]


def test_a_duplicate_action_after_an_earlier_read_is_answered_again(
    txmq_mysql_engine: Engine,
) -> None:
    barrier, table = _barrier(txmq_mysql_engine)
    ran: list[str] = []
    with Session(txmq_mysql_engine) as duplicate, duplicate.begin():
        duplicate.execute(select(func.count()).select_from(table)).scalar_one()
        _apply_action(txmq_mysql_engine, barrier)
        result = barrier.action(duplicate, "saga-1", "payment", lambda: ran.append("again"))
    assert result.duplicate
    assert result.reply == {"charged": 10}
    assert ran == []
