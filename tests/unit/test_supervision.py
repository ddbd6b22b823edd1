"""Supervised loops: transient errors back off and recover, fatal ones and deaths show in
health(), on the loop itself and on Relay, Producer and Consumer."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, create_engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

import txmq
from txmq.adapters.memory.adapter import InMemoryBroker
from txmq.consumer import Consumer, make_inbox_table
from txmq.errors import ConfigurationError, DatabaseRefused
from txmq.outbox import Producer, make_outbox_tables
from txmq.outbox.relay import _Lane
from txmq.supervision import LoopHealth, LoopState, SupervisedLoop
from txmq.testing import wait_for

WAIT = 30.0


class Crash(BaseException):
    """What no loop catches as a transient error: it escapes the step."""


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def test_a_transient_error_backs_off_and_recovers(stop: threading.Event) -> None:
    calls: list[int] = []

    def step() -> bool:
        calls.append(1)
        if len(calls) <= 3:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return False

    loop = SupervisedLoop(name="flaky", step=step, stop=stop, idle=lambda: stop.wait(0.01))
    loop.start()

    def backing_off_now() -> LoopHealth | None:
        # The very look that saw it backing off: a second look may come after the backoff.
        health = loop.health()
        return health if health.state is LoopState.BACKING_OFF else None

    backing_off = wait_for(backing_off_now, what="backing off")
    assert backing_off.healthy
    assert backing_off.alive
    assert backing_off.last_error is not None
    assert "server closed the connection" in backing_off.last_error
    wait_for(lambda: len(calls) > 4, what="the loop to resume")
    recovered = loop.health()
    assert recovered.state in (LoopState.RUNNING, LoopState.IDLE)
    assert recovered.last_error is None
    assert recovered.seconds_since_heartbeat < WAIT
    stop.set()
    loop.join(WAIT)
    assert loop.health().state is LoopState.STOPPED
    assert loop.health().healthy


def test_a_fatal_error_stops_the_loop_and_is_logged_once(
    stop: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def step() -> bool:
        calls.append(1)
        raise ConfigurationError("no such setting")

    loop = SupervisedLoop(name="misconfigured", step=step, stop=stop)
    with caplog.at_level(logging.INFO, logger="txmq.supervision"):
        loop.start()
        loop.join(WAIT)
    health = loop.health()
    assert not health.alive
    assert health.state is LoopState.DEAD
    assert not health.healthy
    assert isinstance(health.fatal, ConfigurationError)
    assert calls == [1]
    assert [r.getMessage() for r in caplog.records] == [
        "misconfigured stopped: ConfigurationError: no such setting"
    ]
    assert caplog.records[0].exc_info is None


def test_a_refused_database_connection_is_fatal_without_the_password(
    stop: threading.Event,
) -> None:
    engine = create_engine("postgresql+psycopg://someone:s3cret-pw@127.0.0.1:1/db")
    driver_error = Exception(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        'FATAL:  password authentication failed for user "someone"'
    )

    def step() -> bool:
        raise OperationalError(None, None, driver_error)  # type: ignore[arg-type]

    loop = SupervisedLoop(name="refused", step=step, stop=stop)
    loop.start()
    loop.join(WAIT)
    engine.dispose()
    fatal = loop.health().fatal
    assert isinstance(fatal, DatabaseRefused)
    assert 'password authentication failed for user "someone"' in str(fatal)
    assert "s3cret-pw" not in str(fatal)


def test_a_loop_that_dies_shows_in_health(stop: threading.Event) -> None:
    def step() -> bool:
        raise Crash("boom")

    loop = SupervisedLoop(name="doomed", step=step, stop=stop)
    loop.start()
    loop.join(WAIT)
    health = loop.health()
    assert health.state is LoopState.DEAD
    assert isinstance(health.fatal, Crash)
    assert not health.alive


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    yield engine
    engine.dispose()


def test_a_dead_relay_lane_makes_producer_and_relay_unhealthy(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    metadata = MetaData()
    tables = make_outbox_tables(metadata)
    metadata.create_all(engine)
    producer = Producer(group="orders", engine=engine, broker=InMemoryBroker(), tables=tables)
    producer.start()
    try:
        wait_for(lambda: producer.health().loops != (), what="the loops to start")
        assert producer.healthy()
        assert {loop.name for loop in producer.health().loops} == {
            "txmq-checkback",
            "txmq-relay-0",
        }

        def crash(self: _Lane) -> int:
            raise Crash("lane bug")

        monkeypatch.setattr(_Lane, "run_once", crash)
        with Session(engine) as session, session.begin():  # wakes nothing on SQLite; polled
            producer.stage(session, txmq.Message("t", b"x"))
        wait_for(lambda: not producer.healthy(), what="the producer to be unhealthy")
        (dead,) = producer.health().dead
        assert dead.name == "txmq-relay-0"
        assert isinstance(dead.fatal, Crash)
        assert producer._relay is not None
        assert not producer._relay.healthy()
    finally:
        producer.close()


def test_a_dead_consumer_worker_makes_the_consumer_unhealthy(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = make_inbox_table(MetaData(), name="inbox")
    inbox.metadata.create_all(engine)
    broker = InMemoryBroker()
    consumer = Consumer(broker=broker, engine=engine, group="g", inbox=inbox, poll_interval=0.05)

    @consumer.handler("t")
    def handle(message: txmq.Message, session: Session) -> None:
        raise Crash("handler escaped")

    consumer.start()
    try:
        assert consumer.healthy()
        with broker.publisher() as publisher:
            publisher.publish([txmq.Message("t", b"x")])
        wait_for(lambda: not consumer.healthy(), what="the consumer to be unhealthy")
        (dead,) = consumer.health().dead
        assert dead.name == "txmq-consumer-g-0"
        assert isinstance(dead.fatal, Crash)
    finally:
        consumer.stop()


def test_consumer_run_raises_what_killed_a_worker(engine: Engine) -> None:
    inbox = make_inbox_table(MetaData(), name="inbox")
    inbox.metadata.create_all(engine)
    broker = InMemoryBroker()
    consumer = Consumer(
        broker=broker, engine=engine, group="g", inbox=inbox, poll_interval=0.05, concurrency=2
    )

    @consumer.handler("t")
    def handle(message: txmq.Message, session: Session) -> None:
        raise Crash("handler escaped")

    broker.declare(consumer.topologies())
    with broker.publisher() as publisher:
        publisher.publish([txmq.Message("t", b"x")])
    with pytest.raises(Crash, match="handler escaped"):
        consumer.run()
    assert not consumer.running
