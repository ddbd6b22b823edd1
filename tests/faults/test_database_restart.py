"""A real PostgreSQL restart during relay, check-back and consumption, on both brokers.

Each test takes its database away with a fast shutdown (every connection is cut), keeps it
down for a while and starts it again on the same data and port, while work is flowing. It
then checks that the work resumed by itself soon after the database was back, and that the
messages applied are exactly the messages committed: nothing lost, nothing applied twice.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine, select
from sqlalchemy.orm import Session

import txmq
from txmq.consumer import Consumer, make_inbox_table
from txmq.outbox import CheckBackPolicy, Producer, make_outbox_tables
from txmq.states import LocalTransactionState, RecordState
from txmq.testing import wait_for
from txmq.testing.provision.processes import RestartablePostgres

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]

log = logging.getLogger(__name__)

#: Longest wait for a condition that must come true (generous: the machine is shared).
WAIT = 60.0
#: How long a restart keeps the database down.
DOWNTIME = 2.5
#: Longest time from "the database is back" to "a message committed then has been applied".
#: The contract is 5 s; the bound leaves room for a loaded, shared machine.
RESUMES_WITHIN = 20.0


@dataclass
class Sink:
    """A consumer group whose handler records every message it applies in ``applied``."""

    engine: Engine
    applied: Table
    inbox: Table
    consumer: Consumer

    def ids(self) -> list[str]:
        with self.engine.connect() as connection:
            return list(connection.execute(select(self.applied.c.message_id)).scalars())


@pytest.fixture
def names() -> tuple[str, str]:
    """A unique (suffix, topic) for one test."""
    suffix = uuid.uuid4().hex[:10]
    return suffix, f"t{suffix}.evt"


@pytest.fixture
def adapter(broker_url: str) -> Iterator[txmq.Adapter]:
    adapter = txmq.connect(broker_url)
    yield adapter
    adapter.close()


def make_sink(adapter: txmq.Adapter, database_url: str, suffix: str, topic: str) -> Sink:
    metadata = MetaData()
    inbox = make_inbox_table(metadata, name=f"inbox_{suffix}")
    applied = Table(
        f"applied_{suffix}",
        metadata,
        # No unique constraint: a message applied twice shows as two rows.
        Column("row", Integer, primary_key=True, autoincrement=True),
        Column("message_id", String(80), nullable=False),
    )
    engine = create_engine(database_url, pool_size=5)
    metadata.create_all(engine)
    consumer = Consumer(
        broker=adapter, engine=engine, group=f"g{suffix}", inbox=inbox, poll_interval=0.2
    )

    @consumer.handler(topic)
    def record(message: txmq.Message, session: Session) -> None:
        session.execute(applied.insert().values(message_id=message.id))

    return Sink(engine, applied, inbox, consumer)


@pytest.fixture
def sinks() -> Iterator[list[Sink]]:
    made: list[Sink] = []
    yield made
    for sink in made:
        sink.consumer.stop()
        try:
            MetaData().drop_all(sink.engine, tables=[sink.applied, sink.inbox])
        finally:
            sink.engine.dispose()


@dataclass
class Outbox:
    engine: Engine
    metadata: MetaData
    prefix: str

    def producer(self, adapter: txmq.Adapter, **options: object) -> Producer:
        return Producer(
            group=f"p{self.prefix.strip('_')}",
            engine=self.engine,
            broker=adapter,
            tables=make_outbox_tables(self.metadata, prefix=self.prefix),
            **options,  # type: ignore[arg-type]
        )

    def ids(self, *states: RecordState) -> set[str]:
        records = make_outbox_tables(self.metadata, prefix=self.prefix).records
        query = select(records.c.id)
        if states:
            query = query.where(records.c.state.in_([s.value for s in states]))
        with self.engine.connect() as connection:
            return set(connection.execute(query).scalars())


@pytest.fixture
def outbox(private_postgres: RestartablePostgres, names: tuple[str, str]) -> Iterator[Outbox]:
    """Outbox tables on the private (restartable) database."""
    engine = create_engine(private_postgres.url, pool_size=5)
    metadata = MetaData()
    prefix = f"o{names[0]}_"
    make_outbox_tables(metadata, prefix=prefix)
    metadata.create_all(engine)
    yield Outbox(engine, metadata, prefix)
    private_postgres.start_server()
    metadata.drop_all(engine)
    engine.dispose()


@dataclass
class Feeder:
    """Calls ``send()`` in a thread until stopped; ``send`` returns what it committed.

    A send that raises (the database is down) is tried again a moment later; whether it
    committed is then unknown, so tests take the database's word for what was committed.
    """

    send: Callable[[int], list[str]]
    every: float = 0.02
    confirmed: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Feeder:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.every):
            try:
                self.confirmed.extend(self.send(n))
            except Exception as exc:  # the database is down: try again later
                log.debug("feeder: %s", exc)
            n += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


def once_back(send: Callable[[], str]) -> str:
    """Commit one message right after a restart, retrying until the database takes it."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return send()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def restart_and_measure(
    server: RestartablePostgres, sink: Sink, send_one: Callable[[], str]
) -> float:
    """Restart the database; return how long after it was back a message committed then
    was applied."""
    server.restart(down_for=DOWNTIME)
    back = time.monotonic()
    marker = once_back(send_one)
    wait_for(
        lambda: marker in sink.ids(),
        timeout=RESUMES_WITHIN,
        what="a message committed after the restart to be applied",
    )
    return time.monotonic() - back


def assert_exactly_once(sink: Sink, committed: set[str]) -> None:
    wait_for(lambda: set(sink.ids()) >= committed, what="every committed message applied")
    applied = sink.ids()
    assert set(applied) == committed
    assert len(applied) == len(committed), "a message was applied twice"


def test_relay_resumes_after_database_restart(
    adapter: txmq.Adapter,
    database_url: str,
    private_postgres: RestartablePostgres,
    outbox: Outbox,
    names: tuple[str, str],
    sinks: list[Sink],
) -> None:
    suffix, topic = names
    sink = make_sink(adapter, database_url, suffix, topic)
    sinks.append(sink)
    sink.consumer.start()
    producer = outbox.producer(adapter)

    def stage(n: int) -> list[str]:
        messages = [txmq.Message(topic, f"{n}.{i}".encode(), key=f"k{i}") for i in range(5)]
        with Session(outbox.engine) as session, session.begin():
            producer.stage(session, *messages)
        return [m.id for m in messages]

    feeder = Feeder(stage).start()
    producer.start()
    try:
        wait_for(lambda: len(sink.ids()) >= 50, what="the relay to publish")
        took = restart_and_measure(private_postgres, sink, lambda: stage(-1)[0])
        log.info("relay resumed %.1f s after the database was back", took)
        feeder.stop()
        committed = outbox.ids()
        assert set(feeder.confirmed) <= committed
        assert_exactly_once(sink, committed)
        wait_for(lambda: outbox.ids(RecordState.SENT) == committed, what="every record marked SENT")
    finally:
        feeder.stop()
        producer.close()


def test_check_back_resumes_after_database_restart(
    adapter: txmq.Adapter,
    database_url: str,
    private_postgres: RestartablePostgres,
    outbox: Outbox,
    names: tuple[str, str],
    sinks: list[Sink],
) -> None:
    suffix, topic = names
    sink = make_sink(adapter, database_url, suffix, topic)
    sinks.append(sink)
    sink.consumer.start()

    def checker(message: txmq.Message, count: int) -> LocalTransactionState:
        # Even bodies committed, odd ones rolled back: the check-back decides every one.
        even = int(message.body) % 2 == 0
        return LocalTransactionState.COMMIT if even else LocalTransactionState.ROLLBACK

    producer = outbox.producer(
        adapter,
        checker=checker,
        check_policy=CheckBackPolicy(
            immunity=timedelta(seconds=1), interval=timedelta(milliseconds=200)
        ),
    )

    def unknown(message: txmq.Message, arg: None) -> LocalTransactionState:
        return LocalTransactionState.UNKNOWN

    def send(n: int) -> list[str]:
        message = txmq.Message(topic, str(n).encode())
        producer.send_in_transaction(message, unknown, None)
        return [message.id]

    feeder = Feeder(send).start()
    producer.start(check_back_every=0.2)
    try:
        wait_for(lambda: len(sink.ids()) >= 20, what="check-backs to commit messages")
        took = restart_and_measure(private_postgres, sink, lambda: send(0)[0])
        log.info("check-back resumed %.1f s after the database was back", took)
        feeder.stop()
        wait_for(
            lambda: not outbox.ids(RecordState.PREPARED),
            what="every half message decided by check-back",
        )
        committed = outbox.ids(RecordState.READY, RecordState.SENT)
        assert committed, "nothing was committed"
        rolled_back = outbox.ids(RecordState.ROLLED_BACK)
        assert committed | rolled_back == outbox.ids(), "a record neither committed nor rolled back"
        assert_exactly_once(sink, committed)
    finally:
        feeder.stop()
        producer.close()


def test_consumer_resumes_after_database_restart_without_burning_attempts(
    adapter: txmq.Adapter,
    private_postgres: RestartablePostgres,
    names: tuple[str, str],
    sinks: list[Sink],
) -> None:
    suffix, topic = names
    sink = make_sink(adapter, private_postgres.url, suffix, topic)
    sinks.append(sink)
    sink.consumer.start()
    publisher = adapter.publisher()

    def publish(n: int) -> list[str]:
        messages = [txmq.Message(topic, f"{n}.{i}".encode()) for i in range(5)]
        outcomes = publisher.publish(messages)
        assert all(o.ok for o in outcomes), [o.error for o in outcomes]
        return [m.id for m in messages]

    feeder = Feeder(publish, every=0.03).start()
    try:
        wait_for(lambda: len(sink.ids()) >= 50, what="the consumer to apply messages")
        took = restart_and_measure(private_postgres, sink, lambda: feeder.confirmed[-1])
        log.info("consumer resumed %.1f s after the database was back", took)
        feeder.stop()
        assert_exactly_once(sink, set(feeder.confirmed))
        stats = sink.consumer.stats
        # The outage was the database's, not the handler's: no attempt was spent on it.
        assert stats.retried == 0, stats
        assert stats.dead_lettered == 0, stats
    finally:
        feeder.stop()
        publisher.close()
