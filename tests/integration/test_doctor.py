"""``txmq doctor`` as an operator runs it: each kind of problem has its own message and exit
code, on both brokers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine
from sqlalchemy.engine import make_url

import txmq
from txmq.doctor import MAX_CLOCK_SKEW, Problem, examine_database
from txmq.outbox import make_outbox_tables

pytestmark = [pytest.mark.broker, pytest.mark.database]

SRC = Path(__file__).resolve().parents[2] / "src"


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(SRC)}
    env.pop("TXMQ_BROKER_URL", None)
    env.pop("TXMQ_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "txmq.cli", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


@pytest.fixture
def prefix(database_url: str) -> Iterator[str]:
    """txmq's tables under a prefix of their own (and an inbox named after it)."""
    prefix = f"d{uuid.uuid4().hex[:8]}_"
    engine = create_engine(database_url)
    metadata = MetaData()
    tables = make_outbox_tables(metadata, prefix=prefix)
    inbox = txmq.make_inbox_table(metadata, f"{prefix}inbox")
    txmq.create_schema(engine, tables, inbox)
    yield prefix
    metadata.drop_all(engine)
    engine.dispose()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_deployment_that_can_work_passes_every_check(
    broker_url: str, database_url: str, prefix: str
) -> None:
    done = doctor(
        "--broker", broker_url, "--database", database_url, "--prefix", prefix,
        "--inbox", f"{prefix}inbox",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    checks = [line.split(":")[0] for line in done.stdout.splitlines()]
    assert checks == [
        "ok   database", "ok   schema", "ok   clock", "ok   broker", "ok   topology",
        "ok   message size",
    ]  # fmt: skip


def test_a_missing_schema_a_refused_database_and_an_unreachable_one_are_told_apart(
    broker_url: str, database_url: str, prefix: str
) -> None:
    missing = doctor("--broker", broker_url, "--database", database_url, "--prefix", "nope_")
    assert missing.returncode == Problem.SCHEMA, missing.stdout + missing.stderr
    assert "FAIL schema: nope_outbox: missing table" in missing.stdout

    url = make_url(database_url)
    refused = url.set(username="no_such_role", password="s3cret-pw").render_as_string(
        hide_password=False
    )
    done = doctor("--broker", broker_url, "--database", refused)
    assert done.returncode == Problem.DATABASE_REFUSED, done.stdout + done.stderr
    assert "FAIL database: the database refused the connection" in done.stdout
    assert "s3cret-pw" not in done.stdout + done.stderr

    gone = url.set(port=closed_port()).render_as_string(hide_password=False)
    done = doctor("--broker", broker_url, "--database", gone)
    assert done.returncode == Problem.DATABASE_UNREACHABLE, done.stdout + done.stderr
    assert done.stdout.startswith("FAIL database:")


def test_a_stopped_broker_and_refused_credentials_are_told_apart(
    rabbitmq_url: str, kafka_url: str, database_url: str, prefix: str
) -> None:
    tables = ["--database", database_url, "--prefix", prefix, "--inbox", f"{prefix}inbox"]
    for stopped in (
        f"rabbitmq://guest:guest@127.0.0.1:{closed_port()}/?connect_timeout=2",
        f"kafka://127.0.0.1:{closed_port()}?connect_timeout=2",
    ):
        done = doctor("--broker", stopped, *tables)
        assert done.returncode == Problem.BROKER_UNREACHABLE, done.stdout + done.stderr
        assert "FAIL broker:" in done.stdout

    wrong = rabbitmq_url.replace("guest:guest@", "guest:wr0ng-pw@", 1)
    assert wrong != rabbitmq_url, "the test RabbitMQ is expected to take guest:guest"
    done = doctor("--broker", wrong, *tables)
    assert done.returncode == Problem.BROKER_REFUSED, done.stdout + done.stderr
    assert "FAIL broker: the broker refused the credentials" in done.stdout
    assert "wr0ng-pw" not in done.stdout + done.stderr
    assert kafka_url  # Kafka here has no authentication to refuse


def test_an_exchange_an_older_txmq_declared_is_a_topology_problem(
    rabbitmq_url: str, database_url: str, prefix: str
) -> None:
    from txmq.adapters.rabbitmq.connection import open_blocking
    from txmq.adapters.rabbitmq.settings import RabbitMQSettings
    from txmq.adapters.registry import parse_broker_url

    exchange = f"older{uuid.uuid4().hex[:8]}"
    settings = parse_broker_url(rabbitmq_url)
    assert isinstance(settings, RabbitMQSettings)
    connection = open_blocking(settings, name="test raw channel")
    channel = connection.channel()
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)  # no alternate
    try:
        separator = "&" if "?" in rabbitmq_url else "?"
        done = doctor(
            "--broker", f"{rabbitmq_url}{separator}exchange={exchange}", "--database",
            database_url, "--prefix", prefix, "--inbox", f"{prefix}inbox",
        )  # fmt: skip
        assert done.returncode == Problem.TOPOLOGY, done.stdout + done.stderr
        assert "FAIL topology:" in done.stdout
        assert "unroutable=return" in done.stdout
    finally:
        channel.exchange_delete(exchange)
        connection.close()


def test_a_malformed_url_is_a_configuration_error(database_url: str) -> None:
    done = doctor("--broker", "nats://x", "--database", database_url)
    assert done.returncode == Problem.CONFIGURATION
    assert done.stderr.startswith("error:")


def test_a_slow_schema_check_is_no_clock_skew(
    database_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database's time is compared with this host's time when the database told it: a
    schema check (or a loaded host) taking longer than the allowed skew after that is none.
    (On a loaded 2-core machine the suite failed on 'this host is 1.380 s ahead'.)"""
    from txmq import schema_check

    differences = schema_check.schema_differences

    def slow_schema_differences(*args: Any, **kwargs: Any) -> list[str]:
        time.sleep(MAX_CLOCK_SKEW + 1)
        return differences(*args, **kwargs)

    monkeypatch.setattr(schema_check, "schema_differences", slow_schema_differences)
    engine = create_engine(database_url)
    try:
        found = {
            f.check: f for f in examine_database(engine, prefix=prefix, inbox=f"{prefix}inbox")
        }
    finally:
        engine.dispose()
    assert found["schema"].ok, found["schema"].detail
    assert found["clock"].ok, found["clock"].detail
