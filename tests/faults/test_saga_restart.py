"""The orchestrator's operator loop survives a database restart: it backs off while the
database is away and carries out an operator's request made after it is back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import MetaData, create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

import txmq
from txmq.saga import Orchestrator, SagaDefinition, SagaState, Step, abort_saga, make_saga_table
from txmq.testing import wait_for
from txmq.testing.provision.processes import RestartablePostgres

pytestmark = [pytest.mark.database, pytest.mark.slow]


@dataclass
class Order:
    order_id: int


def test_the_operator_loop_resumes_after_a_database_restart(
    private_postgres: RestartablePostgres, unique: Callable[[str], str]
) -> None:
    engine = create_engine(private_postgres.url, pool_pre_ping=True)
    metadata = MetaData()
    prefix = unique("s").replace("-", "_") + "_"
    sagas = make_saga_table(metadata, prefix=prefix)
    outbox = txmq.make_outbox_tables(metadata, prefix=prefix)
    inbox = txmq.make_inbox_table(metadata, prefix=prefix)
    metadata.create_all(engine)
    broker = txmq.connect(f"memory://{unique('sagas')}")
    producer = txmq.Producer(group=unique("g"), engine=engine, broker=broker, tables=outbox)
    consumer = txmq.Consumer(broker=broker, engine=engine, group=unique("g"), inbox=inbox)
    definition = SagaDefinition(
        name=unique("order"),
        data=Order,
        steps=[Step("pay", action=unique("pay"), compensation=unique("refund"))],
    )
    orchestrator = Orchestrator(
        definition=definition, consumer=consumer, producer=producer, table=sagas, poll_interval=0.2
    ).start()
    try:
        with Session(engine) as session, session.begin():
            saga_id = orchestrator.begin(session, Order(order_id=1))

        private_postgres.restart(down_for=3.0)

        def aborted() -> bool:
            try:
                abort_saga(engine, sagas, saga_id)
            except DBAPIError:
                return False  # the database is still coming back
            return True

        assert wait_for(aborted, timeout=60, what="the abort to be written")
        assert wait_for(
            lambda: orchestrator.get(saga_id).state is SagaState.COMPENSATING,
            timeout=60,
            what="the operator loop to carry out the abort",
        )
        assert orchestrator.health().healthy
    finally:
        orchestrator.close()
        producer.close()
        engine.dispose()
