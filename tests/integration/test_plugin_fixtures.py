"""The plugin's function-scoped fixtures: fresh databases with txmq's tables, unique names
and memory:// brokers, used as a user's test would use them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.orm import Session

import txmq
from txmq.adapters.memory.adapter import InMemoryBroker
from txmq.outbox import Producer

pytest_plugins = ["pytester"]

TABLES = {"txmq_outbox", "txmq_tx_marker", "txmq_inbox"}


def stage_and_relay(engine: Engine, broker_url: str, group: str, topic: str) -> txmq.Message:
    broker = txmq.connect(broker_url)
    broker.declare([txmq.Topology(f"{group}-reader", topic)])
    producer = Producer(group=group, engine=engine, broker=broker)
    message = txmq.Message(topic, b"hello")
    with Session(engine) as session, session.begin():
        producer.stage(session, message)
    assert producer.relay().drain() == 1
    return message


def test_txmq_engine_is_a_fresh_postgres_database_with_txmq_tables(
    txmq_engine: Engine, txmq_memory_url: str, txmq_unique: Callable[[str], str]
) -> None:
    assert txmq_engine.dialect.name == "postgresql"
    assert set(inspect(txmq_engine).get_table_names()) >= TABLES
    with txmq_engine.connect() as connection:
        triggers = connection.execute(
            text("SELECT tgname FROM pg_trigger WHERE tgrelid = 'txmq_outbox'::regclass")
        ).scalars()
        assert set(triggers) == {"txmq_outbox_insert_notify", "txmq_outbox_update_notify"}
        assert connection.execute(text("SELECT count(*) FROM txmq_outbox")).scalar() == 0
    group, topic = txmq_unique("orders"), txmq_unique("orders.created")
    message = stage_and_relay(txmq_engine, txmq_memory_url, group, topic)
    broker = txmq.connect(txmq_memory_url)
    assert isinstance(broker, InMemoryBroker)
    assert [m.id for m in broker.messages(f"{group}-reader.{topic}")] == [message.id]


def test_txmq_sqlite_engine_has_txmq_tables(
    txmq_sqlite_engine: Engine, txmq_memory_url: str, txmq_unique: Callable[[str], str]
) -> None:
    assert txmq_sqlite_engine.dialect.name == "sqlite"
    assert set(inspect(txmq_sqlite_engine).get_table_names()) >= TABLES
    stage_and_relay(txmq_sqlite_engine, txmq_memory_url, txmq_unique("g"), txmq_unique("t"))


def test_txmq_unique_gives_new_valid_names(txmq_unique: Callable[[str], str]) -> None:
    names = {txmq_unique("orders.created") for _ in range(100)}
    assert len(names) == 100
    assert all(name.startswith("orders.created-") for name in names)
    with pytest.raises(txmq.errors.InvalidMessage):
        txmq_unique("no spaces")


def test_each_test_gets_its_own_database_dropped_afterwards_even_if_left_open(
    pytester: pytest.Pytester, database_url: str
) -> None:
    """The inner tests leave a connection open on their database (a relay left running
    would); the fixture drops the database anyway, and the next test gets another one."""
    seen = pytester.path / "seen.txt"
    pytester.makepyfile(
        f"""
        from sqlalchemy import create_engine, text

        left_open = []

        def _record(url):
            connection = create_engine(url).connect()
            left_open.append(connection)
            with open({str(seen)!r}, "a") as f:
                f.write(url + "\\n")

        def test_one(txmq_database):
            _record(txmq_database)

        def test_two(txmq_database):
            _record(txmq_database)
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)
    urls = seen.read_text().split()
    assert len(set(urls)) == 2
    names = [url.rsplit("/", 1)[1] for url in urls]
    assert all(name.startswith("txmq_test_") for name in names)
    server = create_engine(database_url)
    try:
        with server.connect() as connection:
            left = connection.execute(
                text("SELECT datname FROM pg_database WHERE datname = ANY(:names)"),
                {"names": names},
            ).scalars()
            assert list(left) == []
    finally:
        server.dispose()


def test_a_database_that_cannot_be_created_says_why_without_the_password() -> None:
    from txmq.testing.databases import fresh_postgres_database
    from txmq.testing.provision import ProvisionError

    with (
        pytest.raises(ProvisionError, match="cannot create a test database on") as caught,
        fresh_postgres_database("postgresql+psycopg://u:s3cret@127.0.0.1:1/postgres"),
    ):
        pass
    assert "s3cret" not in str(caught.value)
    assert "postgresql+psycopg://u:***@127.0.0.1:1/postgres" in str(caught.value)


def test_txmq_mysql_engine_is_a_fresh_mariadb_database_dropped_after_the_test(
    mysql_url: str, txmq_memory_url: str, txmq_unique: Callable[[str], str]
) -> None:
    from sqlalchemy import create_engine

    from txmq.testing.databases import fresh_mariadb_database

    with fresh_mariadb_database(mysql_url) as url:
        engine = create_engine(url)
        try:
            assert engine.dialect.name == "mysql"
            assert set(inspect(engine).get_table_names()) >= TABLES
            stage_and_relay(engine, txmq_memory_url, txmq_unique("g"), txmq_unique("t"))
            # A connection left open (a relay the test did not stop) does not hold the drop.
            held = engine.connect()
            held.execute(text("SELECT 1"))
        finally:
            engine.dispose(close=False)
    held.invalidate()  # the drop killed it: nothing to roll back
    name = url.rsplit("/", 1)[1]
    server = create_engine(mysql_url)
    try:
        with server.connect() as connection:
            left = connection.execute(
                text("SELECT schema_name FROM information_schema.schemata WHERE schema_name = :n"),
                {"n": name},
            ).scalars()
            assert list(left) == []
    finally:
        server.dispose()


def test_a_mariadb_database_that_cannot_be_created_says_why_without_the_password() -> None:
    from txmq.testing.databases import fresh_mariadb_database
    from txmq.testing.provision import ProvisionError

    with (
        pytest.raises(ProvisionError, match="cannot create a test database on") as caught,
        fresh_mariadb_database("mysql+pymysql://u:s3cret@127.0.0.1:1/txmq"),
    ):
        pass
    assert "s3cret" not in str(caught.value)
    assert "mysql+pymysql://u:***@127.0.0.1:1/txmq" in str(caught.value)
