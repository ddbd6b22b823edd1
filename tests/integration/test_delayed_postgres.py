"""Delayed messages and the application's open transactions on PostgreSQL: a relay never
waits for a transaction that is cancelling a due record (it skips the locked record)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, MetaData, create_engine
from sqlalchemy.orm import Session

import txmq
from txmq.outbox import Producer, make_outbox_tables
from txmq.states import RecordState
from txmq.testing import wait_for

pytestmark = pytest.mark.database


@pytest.fixture
def producer(database_url: str) -> Iterator[Producer]:
    engine: Engine = create_engine(database_url, pool_size=10)
    metadata = MetaData()
    tables = make_outbox_tables(metadata, prefix=f"dp{uuid.uuid4().hex[:8]}_")
    metadata.create_all(engine)
    producer = Producer(group="g", engine=engine, broker="memory://", tables=tables)
    yield producer
    producer.close()
    metadata.drop_all(engine)
    engine.dispose()


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_a_relay_skips_a_due_record_an_open_transaction_is_cancelling(
    producer: Producer, outcome: str
) -> None:
    cancelled, other = txmq.Message("t", b"cancelled"), txmq.Message("t", b"other")
    due = datetime.now(UTC) + timedelta(seconds=1)
    with Session(producer.engine) as session, session.begin():
        producer.stage(session, cancelled, other, deliver_at=due)
    wait_for(lambda: datetime.now(UTC) >= due, 10, "the due time")
    relay = producer.relay()
    drained: list[int] = []
    with Session(producer.engine) as session:
        session.begin()
        assert producer.cancel(session, cancelled.id)  # its row is locked until the end
        drainer = threading.Thread(target=lambda: drained.append(relay.drain(timeout=30)))
        drainer.start()
        try:
            wait_for(lambda: drained, 20, "the relay to drain past the locked record")
        finally:
            getattr(session, outcome)()
            drainer.join()
    assert drained == [1]
    assert producer.store.get(other.id).state is RecordState.SENT
    if outcome == "commit":
        assert producer.store.get(cancelled.id).state is RecordState.CANCELLED
    else:  # the cancel was rolled back: released at the relay's next look
        assert relay.drain() == 1
        assert producer.store.get(cancelled.id).state is RecordState.SENT


def test_a_look_that_skips_a_locked_due_record_names_the_next_due_time_to_come(
    producer: Producer,
) -> None:
    """The skipped record is released at a later look (within ``poll_interval``): the next
    look is not scheduled at its due time, already past, which had every idle lane of the
    relay look again every hundredth of a second while the transaction stayed open."""
    locked, later = txmq.Message("t", b"locked"), txmq.Message("t", b"later")
    due = datetime.now(UTC) + timedelta(seconds=1)
    later_due = due + timedelta(hours=1)
    with Session(producer.engine) as session, session.begin():
        producer.stage(session, locked, deliver_at=due)
        producer.stage(session, later, deliver_at=later_due)
    wait_for(lambda: datetime.now(UTC) >= due, 10, "the due time")
    with Session(producer.engine) as session:
        session.begin()
        assert producer.cancel(session, locked.id)  # its row is locked until the end
        try:
            moved, upcoming = producer.store.release_due("g", now=datetime.now(UTC))
        finally:
            session.rollback()
    assert moved == 0
    assert upcoming is not None
    assert abs((upcoming - later_due).total_seconds()) < 1
