"""Operators' requests on a saga table that several saga definitions share (the table has a
``saga_name`` column for that): each orchestrator carries out its own saga's requests, and
another saga's waiting requests neither hold them back nor are taken by it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, MetaData, Table
from sqlalchemy.orm import Session

import txmq
from txmq.saga import (
    Orchestrator,
    SagaDefinition,
    SagaState,
    Step,
    abort_saga,
    make_saga_table,
)

pytestmark = pytest.mark.database


@dataclass
class Order:
    order_id: int


@pytest.fixture
def sagas(txmq_engine: Engine) -> Table:
    metadata = MetaData()
    table = make_saga_table(metadata)
    metadata.create_all(txmq_engine)
    return table


@pytest.fixture
def orchestrator_of(
    txmq_engine: Engine, sagas: Table, unique: Callable[[str], str]
) -> Iterator[Callable[[str], Orchestrator[Order]]]:
    broker = txmq.connect(f"memory://{unique('sagas')}")
    closers: list[Callable[[], object]] = []

    def orchestrator_of(name: str) -> Orchestrator[Order]:
        definition = SagaDefinition(
            name=unique(name),
            data=Order,
            steps=[Step("pay", action=unique(f"{name}.pay"), compensation=unique(f"{name}.back"))],
        )
        producer = txmq.Producer(group=unique(name), engine=txmq_engine, broker=broker)
        consumer = txmq.Consumer(broker=broker, engine=txmq_engine, group=unique(name))
        closers.append(producer.close)
        return Orchestrator(
            definition=definition, consumer=consumer, producer=producer, table=sagas
        )

    yield orchestrator_of
    for close in closers:
        close()


def test_another_sagas_requests_do_not_hold_back_this_ones(
    txmq_engine: Engine,
    sagas: Table,
    orchestrator_of: Callable[[str], Orchestrator[Order]],
) -> None:
    other, mine = orchestrator_of("other"), orchestrator_of("mine")
    with Session(txmq_engine) as session, session.begin():
        other_id = other.begin(session, Order(order_id=1))
        mine_id = mine.begin(session, Order(order_id=2))
    # The other saga's abort is the older request, and its orchestrator is not running.
    abort_saga(txmq_engine, sagas, other_id)
    abort_saga(txmq_engine, sagas, mine_id)

    assert mine.run_operator_requests(limit=1) == 1
    aborted = mine.get(mine_id)
    assert aborted.nudged_at is None
    assert aborted.state is SagaState.COMPENSATING
    assert aborted.op == "compensation"
    assert other.get(other_id).nudged_at is not None  # left for its own orchestrator
