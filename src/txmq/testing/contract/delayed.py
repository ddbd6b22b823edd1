"""Delayed messages, written once and run on every adapter (memory, RabbitMQ, Kafka), each
on SQLite and PostgreSQL: a message staged with ``deliver_at=`` / ``delay=`` waits in the
outbox until it is due, survives a relay restart, can be cancelled in the caller's
transaction, and is published when due even by a relay that polls rarely.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, create_engine
from sqlalchemy.orm import Session

import txmq
from txmq.outbox import Producer, make_outbox_tables
from txmq.states import LocalTransactionState, RecordState
from txmq.testing import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.database]

#: Long enough for a relay to have passed over the record several times before it is due.
DELAY = timedelta(seconds=2)


@pytest.fixture(params=["sqlite", "postgresql"])
def outbox(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[Engine]:
    """An engine whose database holds this test's outbox tables (prefix ``outbox_prefix``),
    on SQLite (a file) and on PostgreSQL."""
    url = f"sqlite:///{tmp_path / 'app.db'}" if request.param == "sqlite" else database_url
    engine = create_engine(url, pool_size=10) if request.param != "sqlite" else create_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def tables(outbox: Engine) -> Iterator[txmq.OutboxTables]:
    metadata = MetaData()
    made = make_outbox_tables(metadata, prefix=f"d{uuid.uuid4().hex[:8]}_")
    metadata.create_all(outbox)
    yield made
    metadata.drop_all(outbox)


@pytest.fixture
def topic(broker: txmq.Adapter) -> str:
    name = f"delayed.{uuid.uuid4().hex[:8]}"
    broker.declare([txmq.Topology("reader", name)])
    return name


def producer_for(
    engine: Engine, tables: txmq.OutboxTables, broker: txmq.Adapter, **kw: object
) -> Producer:
    return Producer(
        group=f"g-{tables.records.name}",
        engine=engine,
        broker=broker,
        tables=tables,
        **kw,  # type: ignore[arg-type]
    )


def arrivals(
    broker: txmq.Adapter, topic: str, count: int, *, timeout: float = 30.0
) -> list[tuple[datetime, txmq.Message]]:
    """Consume (and ack) until ``count`` messages arrived or ``timeout`` passed; each with
    the time it arrived."""
    received: list[tuple[datetime, txmq.Message]] = []
    sources = broker.sources_for([txmq.Topology("reader", topic)])
    deadline = time.monotonic() + timeout
    with broker.subscribe("reader", sources) as subscription:
        while len(received) < count and time.monotonic() < deadline:
            deliveries = subscription.poll(0.2)
            now = datetime.now(UTC)
            received.extend((now, d.message) for d in deliveries if d.message is not None)
            subscription.ack(deliveries)
    return received


def ids(received: list[tuple[datetime, txmq.Message]]) -> list[str]:
    return [m.id for _, m in received]


def test_a_delayed_message_waits_in_the_outbox_until_due(
    outbox: Engine, tables: txmq.OutboxTables, broker: txmq.Adapter, topic: str
) -> None:
    producer = producer_for(outbox, tables, broker)
    at_once = txmq.Message(topic, b"at once")
    later = txmq.Message(topic, b"later")
    due = datetime.now(UTC) + DELAY
    with Session(outbox) as session, session.begin():
        producer.stage(session, at_once)
        producer.stage(session, later, deliver_at=due)
    record = producer.store.get(later.id)
    assert (record.state, record.deliver_at) == (RecordState.DELAYED, due)
    relay = producer.relay(poll_interval=0.2).start()
    try:
        received = arrivals(broker, topic, 2)
    finally:
        relay.stop()
    assert ids(received) == [at_once.id, later.id]
    assert received[1][0] >= due, "the delayed message was published before it was due"
    assert producer.store.counts() == {"SENT": 2}


def test_a_delay_survives_a_relay_restart(
    outbox: Engine, tables: txmq.OutboxTables, broker: txmq.Adapter, topic: str
) -> None:
    """The relay that saw the record waiting is gone when it is due: another, in a new
    producer, publishes it (nothing of the delay lives in a process)."""
    first = producer_for(outbox, tables, broker)
    message, at_once = txmq.Message(topic, b"later"), txmq.Message(topic, b"at once")
    with Session(outbox) as session, session.begin():
        first.stage(session, message, delay=DELAY)
        first.stage(session, at_once)
    relay = first.relay(poll_interval=0.2).start()
    try:
        # Published after the relay's first look for due delayed records.
        assert ids(arrivals(broker, topic, 1)) == [at_once.id]
    finally:
        relay.stop()
        first.close()
    assert first.store.get(message.id).state is RecordState.DELAYED
    second = producer_for(outbox, tables, broker)
    relay = second.relay(poll_interval=0.2).start()
    try:
        assert ids(arrivals(broker, topic, 1)) == [message.id]
    finally:
        relay.stop()
        second.close()


def test_cancel_works_in_the_callers_transaction(
    outbox: Engine, tables: txmq.OutboxTables, broker: txmq.Adapter, topic: str
) -> None:
    producer = producer_for(outbox, tables, broker)
    kept, cancelled, sent = (txmq.Message(topic, body) for body in (b"kept", b"cancelled", b"s"))
    with Session(outbox) as session, session.begin():
        producer.stage(session, kept, cancelled, delay=DELAY)
        producer.stage(session, sent)
    with Session(outbox) as session:
        session.begin()
        assert producer.cancel(session, kept.id)
        session.rollback()  # the caller's transaction rolls back: nothing was cancelled
    with Session(outbox) as session, session.begin():
        assert producer.cancel(session, cancelled.id)
        assert not producer.cancel(session, cancelled.id)  # once
        assert not producer.cancel(session, "no-such-id")
    assert producer.store.get(kept.id).state is RecordState.DELAYED
    assert producer.store.get(cancelled.id).state is RecordState.CANCELLED
    other_group = Producer(group="someone-else", engine=outbox, broker=broker, tables=tables)
    with Session(outbox) as session, session.begin():
        assert not other_group.cancel(session, kept.id)  # another group's record
    relay = producer.relay(poll_interval=0.2).start()
    try:
        received = arrivals(broker, topic, 2)
    finally:
        relay.stop()
    assert ids(received) == [sent.id, kept.id]
    with Session(outbox) as session, session.begin():
        assert not producer.cancel(session, kept.id)  # already sent
    assert producer.store.counts() == {"SENT": 2, "CANCELLED": 1}


def test_a_relay_that_polls_rarely_wakes_at_the_due_time(
    outbox: Engine, tables: txmq.OutboxTables, broker: txmq.Adapter, topic: str
) -> None:
    producer = producer_for(outbox, tables, broker)
    message = txmq.Message(topic, b"later")
    with Session(outbox) as session, session.begin():
        producer.stage(session, message, delay=DELAY)
    # Without waking at the due time it would be published a minute from now at the
    # earliest: after the receive below has given up.
    relay = producer.relay(poll_interval=60.0).start()
    try:
        received = arrivals(broker, topic, 1, timeout=30.0)
    finally:
        relay.stop()
    assert ids(received) == [message.id]


def test_a_delayed_message_holds_nothing_back_and_takes_its_staging_place_once_due(
    outbox: Engine, tables: txmq.OutboxTables, broker: txmq.Adapter, topic: str
) -> None:
    """Per-key order: while waiting, a delayed message does not hold back later messages of
    its key; once due, it goes before the messages of its key staged after it that are
    still waiting."""
    producer = producer_for(outbox, tables, broker)
    relay = producer.relay()
    delayed, overtaking, behind = (
        txmq.Message(topic, body, key="order-7") for body in (b"delayed", b"overtaking", b"behind")
    )
    due = datetime.now(UTC) + DELAY
    with Session(outbox) as session, session.begin():
        producer.stage(session, delayed, deliver_at=due)
    with Session(outbox) as session, session.begin():
        producer.stage(session, overtaking)
    assert relay.drain() == 1  # not held back by the delayed record of its key
    wait_for(
        lambda: datetime.now(UTC) >= due,
        10,
        "the delayed record to be due",
    )
    with Session(outbox) as session, session.begin():
        producer.stage(session, behind)
    assert relay.drain() == 2
    assert ids(arrivals(broker, topic, 3)) == [overtaking.id, delayed.id, behind.id]


def test_a_committed_half_message_is_delivered_at_its_due_time(
    outbox: Engine, tables: txmq.OutboxTables, broker: txmq.Adapter, topic: str
) -> None:
    """COMMIT by the executor, by a check-back, and of a self-answering local transaction:
    each makes its half message DELAYED until due; ROLLBACK discards it."""
    checks = txmq.CheckBackPolicy(immunity=timedelta(0), interval=timedelta(milliseconds=1))
    producer = producer_for(
        outbox,
        tables,
        broker,
        checker=lambda message, count: LocalTransactionState.COMMIT,
        check_policy=checks,
    )
    commit, unknown, rolled_back, local = (
        txmq.Message(topic, body) for body in (b"commit", b"unknown", b"rolled back", b"local")
    )
    due = datetime.now(UTC) + DELAY
    answered = producer.send_in_transaction(
        commit, lambda m, a: LocalTransactionState.COMMIT, None, deliver_at=due
    )
    assert answered.record_state is RecordState.DELAYED
    assert (
        producer.send_in_transaction(
            unknown, lambda m, a: LocalTransactionState.UNKNOWN, None, deliver_at=due
        ).record_state
        is RecordState.PREPARED
    )
    assert (
        producer.send_in_transaction(
            rolled_back, lambda m, a: LocalTransactionState.ROLLBACK, None, deliver_at=due
        ).record_state
        is RecordState.ROLLED_BACK
    )
    assert producer.check_back_once() == 1  # UNKNOWN -> the checker's COMMIT
    assert producer.store.get(unknown.id).state is RecordState.DELAYED
    assert (
        producer.send_in_local_transaction(local, lambda session: None, deliver_at=due).record_state
        is RecordState.DELAYED
    )
    assert producer.relay().drain() == 0  # none is due yet
    relay = producer.relay(poll_interval=0.2).start()
    try:
        received = arrivals(broker, topic, 3)
    finally:
        relay.stop()
    assert sorted(ids(received)) == sorted([commit.id, unknown.id, local.id])
    assert all(at >= due for at, _ in received)
    assert producer.store.get(rolled_back.id).state is RecordState.ROLLED_BACK
