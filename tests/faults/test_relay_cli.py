"""``txmq outbox relay`` as a process: it exits non-zero with one line when its lanes stop
for good, and with 0 on SIGTERM/SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine
from sqlalchemy.engine import make_url

from txmq.outbox import make_outbox_tables

pytestmark = [pytest.mark.broker, pytest.mark.database]

SRC = Path(__file__).resolve().parents[2] / "src"
#: The contract: a relay whose lanes died is gone within this long.
EXITS_WITHIN = 10.0
STARTUP = 60.0


def launch_relay(broker_url: str, database: str, *extra: str) -> subprocess.Popen[str]:
    env = os.environ | {"PYTHONPATH": str(SRC)}
    env.pop("TXMQ_DATABASE_URL", None)
    command = ["outbox", "relay", "--all-groups", "--broker", broker_url, "--database", database]
    command += extra
    return subprocess.Popen(
        [sys.executable, "-m", "txmq.cli", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_relay(broker_url: str, database: str, *extra: str) -> subprocess.Popen[str]:
    process = launch_relay(broker_url, database, *extra)
    assert process.stdout is not None
    line = process.stdout.readline()  # printed once the relay is connected and starting
    assert line.startswith("relay "), (line, process.communicate(timeout=STARTUP))
    return process


def finish(process: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    """Wait for the exit; return (code, stderr)."""
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"the relay was still running after {timeout:.0f} s") from None
    return process.returncode, stderr


@pytest.mark.parametrize(
    ("user", "database", "reason"),
    [
        ("postgres", "no_such_db", 'database "no_such_db_'),
        ("no_such_role:s3cret-pw", "postgres", 'role "no_such_role" does not exist'),
    ],
    ids=["missing-database", "missing-role"],
)
def test_relay_exits_non_zero_within_10_s_when_the_database_refuses_it(
    broker_url: str, database_url: str, user: str, database: str, reason: str
) -> None:
    url = make_url(database_url)
    if database != "postgres":
        database = f"{database}_{uuid.uuid4().hex[:8]}"
    refused = f"postgresql+psycopg://{user}@{url.host}:{url.port}/{database}"
    # It may say so at the door (the schema check before starting) or from a lane.
    started = time.monotonic()
    process = launch_relay(broker_url, refused)
    code, stderr = finish(process, EXITS_WITHIN)
    took = time.monotonic() - started
    assert code == 1, stderr
    assert took < EXITS_WITHIN
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert reason in errors[0]
    assert "the database refused the connection" in errors[0]
    assert "Traceback" not in stderr
    assert "s3cret-pw" not in stderr


@pytest.fixture
def outbox_prefix(database_url: str) -> Iterator[str]:
    prefix = f"c{uuid.uuid4().hex[:8]}_"
    engine = create_engine(database_url)
    metadata = MetaData()
    make_outbox_tables(metadata, prefix=prefix)
    metadata.create_all(engine)
    yield prefix
    metadata.drop_all(engine)
    engine.dispose()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_relay_stops_with_exit_0_on_a_signal(
    broker_url: str, database_url: str, outbox_prefix: str, signum: signal.Signals
) -> None:
    process = start_relay(broker_url, database_url, "--prefix", outbox_prefix)
    process.send_signal(signum)
    code, stderr = finish(process, 30.0)
    assert code == 0, stderr
    assert "error:" not in stderr


def test_relay_exits_1_at_start_on_an_exchange_an_older_txmq_declared(
    rabbitmq_url: str, database_url: str, outbox_prefix: str
) -> None:
    """A broker topology that retrying cannot mend is said once, at the door, instead of
    being backed off by every lane forever."""
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
        started = time.monotonic()
        process = launch_relay(
            f"{rabbitmq_url}{separator}exchange={exchange}",
            database_url,
            "--prefix",
            outbox_prefix,
        )
        code, stderr = finish(process, EXITS_WITHIN)
        assert time.monotonic() - started < EXITS_WITHIN
        assert code == 1, stderr
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, stderr
        assert "unroutable=return" in errors[0]
        assert "Traceback" not in stderr
    finally:
        channel.exchange_delete(exchange)
        connection.close()
