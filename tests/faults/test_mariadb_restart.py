"""A real MariaDB restart while relaying and consuming, on both brokers.

The outbox and the inbox both live on a private MariaDB. The test restarts it (every client
connection is killed), keeps it down for a while and starts it again on the same data and
port while messages flow, then checks that relay and consumer resumed by themselves soon
after the server was back, and that the messages applied are exactly those committed:
nothing lost, nothing applied twice, no attempt of the consumer spent on the outage.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine, select
from sqlalchemy.orm import Session

import txmq
from txmq.consumer import Consumer, make_inbox_table
from txmq.outbox import Producer, make_outbox_tables
from txmq.states import RecordState
from txmq.testing import wait_for
from txmq.testing.provision.processes import RestartableMariaDB

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]

log = logging.getLogger(__name__)

#: Longest wait for a condition that must come true (generous: the machine is shared).
WAIT = 90.0
DOWNTIME = 2.5
#: Longest time from "the server is back" to "a message committed then has been applied".
RESUMES_WITHIN = 30.0


@pytest.fixture
def adapter(broker_url: str) -> Iterator[txmq.Adapter]:
    adapter = txmq.connect(broker_url)
    yield adapter
    adapter.close()


@pytest.fixture
def engine(private_mariadb: RestartableMariaDB) -> Iterator[Engine]:
    engine = create_engine(private_mariadb.url, pool_size=5, pool_pre_ping=False)
    yield engine
    private_mariadb.start_server()
    engine.dispose()


def test_relay_and_consumer_resume_after_a_mariadb_restart(
    adapter: txmq.Adapter, engine: Engine, private_mariadb: RestartableMariaDB
) -> None:
    suffix = uuid.uuid4().hex[:10]
    topic = f"t{suffix}.evt"
    metadata = MetaData()
    tables = make_outbox_tables(metadata, prefix=f"o{suffix}_")
    inbox = make_inbox_table(metadata, name=f"inbox_{suffix}")
    applied = Table(
        f"applied_{suffix}",
        metadata,
        # No unique constraint: a message applied twice shows as two rows.
        Column("row", Integer, primary_key=True, autoincrement=True),
        Column("message_id", String(80), nullable=False),
    )
    metadata.create_all(engine)
    consumer = Consumer(
        broker=adapter, engine=engine, group=f"g{suffix}", inbox=inbox, poll_interval=0.2
    )

    @consumer.handler(topic)
    def record(message: txmq.Message, session: Session) -> None:
        session.execute(applied.insert().values(message_id=message.id))

    producer = Producer(group=f"p{suffix}", engine=engine, broker=adapter, tables=tables)

    def applied_ids() -> list[str]:
        with engine.connect() as connection:
            return list(connection.execute(select(applied.c.message_id)).scalars())

    def outbox_ids(*states: RecordState) -> set[str]:
        query = select(tables.records.c.id)
        if states:
            query = query.where(tables.records.c.state.in_([s.value for s in states]))
        with engine.connect() as connection:
            return set(connection.execute(query).scalars())

    def stage(n: int) -> list[str]:
        messages = [txmq.Message(topic, f"{n}.{i}".encode(), key=f"k{i}") for i in range(5)]
        with Session(engine) as session, session.begin():
            producer.stage(session, *messages)
        return [m.id for m in messages]

    stop = threading.Event()

    def feed() -> None:
        n = 0
        while not stop.wait(0.02):
            try:
                stage(n)
            except Exception as exc:  # the server is down; the database says what committed
                log.debug("feeder: %s", exc)
            n += 1

    consumer.start()
    producer.start()
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        wait_for(lambda: len(applied_ids()) >= 50, timeout=WAIT, what="messages to flow")
        private_mariadb.restart(down_for=DOWNTIME)
        back = time.monotonic()
        deadline = back + WAIT
        while True:
            try:
                marker = stage(-1)[0]
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the server is still coming back
        wait_for(
            lambda: marker in applied_ids(),
            timeout=RESUMES_WITHIN,
            what="a message committed after the restart to be applied",
        )
        log.info("resumed %.1f s after MariaDB was back", time.monotonic() - back)
        stop.set()
        feeder.join(30)
        committed = outbox_ids()
        wait_for(lambda: set(applied_ids()) >= committed, timeout=WAIT, what="all applied")
        ids = applied_ids()
        assert set(ids) == committed
        assert len(ids) == len(committed), "a message was applied twice"
        wait_for(
            lambda: outbox_ids(RecordState.SENT) == committed,
            timeout=WAIT,
            what="every record marked SENT",
        )
        assert producer.healthy()
        assert consumer.healthy()
        stats = consumer.stats
        # The outage was the database's, not the handler's: no attempt was spent on it.
        assert stats.retried == 0, stats
        assert stats.dead_lettered == 0, stats
    finally:
        stop.set()
        feeder.join(30)
        producer.close()
        consumer.stop()
        metadata.drop_all(engine)
