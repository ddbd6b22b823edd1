"""Provisioning real brokers: each mode starts all three, each answers a real call, and stops.

Every test uses its own free ports (and its own state dir for the CLI), so it runs beside
brokers started by ``txmq brokers up`` or anyone else on this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from txmq.adapters.rabbitmq.settings import RabbitMQSettings
from txmq.adapters.registry import parse_broker_url
from txmq.testing import provision
from txmq.testing.provision import engine
from txmq.testing.provision.common import BROKERS, Ports, truthy
from txmq.testing.provision.readiness import tcp_open

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.database]

CLI_TIMEOUT = 900


def _unavailable(reason: str) -> None:
    if truthy(os.environ.get("TXMQ_REQUIRE_BROKERS")):
        pytest.fail(f"{reason} (TXMQ_REQUIRE_BROKERS is set)")
    pytest.skip(reason)


def _round_trip_rabbitmq(url: str) -> None:
    from txmq.adapters.rabbitmq.connection import open_blocking

    parsed = parse_broker_url(url)
    assert isinstance(parsed, RabbitMQSettings)
    connection = open_blocking(parsed, name="provision check")
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        queue = f"provision-{uuid.uuid4().hex}"
        channel.queue_declare(queue, exclusive=True)
        channel.basic_publish("", queue, b"ping", mandatory=True)
        method, _, body = channel.basic_get(queue, auto_ack=True)
        assert method is not None
        assert body == b"ping"
    finally:
        connection.close()


def _round_trip_kafka(url: str) -> None:
    from confluent_kafka import Consumer, Producer

    servers = url.removeprefix("kafka://")
    topic = f"provision-{uuid.uuid4().hex}"
    producer = Producer({"bootstrap.servers": servers, "enable.idempotence": True})
    producer.produce(topic, b"ping")
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": topic,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        message = consumer.poll(30)
        while message is not None and message.error() is not None:
            message = consumer.poll(30)
        assert message is not None
        assert message.value() == b"ping"
    finally:
        consumer.close()


def _round_trip_sql(url: str) -> None:
    import sqlalchemy

    db = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with db.begin() as connection:
            connection.execute(sqlalchemy.text("CREATE TEMPORARY TABLE t (v varchar(8))"))
            connection.execute(sqlalchemy.text("INSERT INTO t VALUES ('ping')"))
            assert connection.execute(sqlalchemy.text("SELECT v FROM t")).scalar_one() == "ping"
    finally:
        db.dispose()


ROUND_TRIPS = {
    "rabbitmq": _round_trip_rabbitmq,
    "kafka": _round_trip_kafka,
    "postgres": _round_trip_sql,
    "mariadb": _round_trip_sql,
}


def _require_mode(mode: str) -> None:
    if mode == "container" and not engine.probe().usable:
        _unavailable("no Docker engine can be used here")
    if mode == "process":
        missing = [tool for tool in ("epmd", "java", "mvn") if shutil.which(tool) is None]
        has_rabbitmq = Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() or shutil.which(
            "rabbitmq-server"
        )
        if missing or not has_rabbitmq:
            _unavailable(f"process mode needs rabbitmq-server, java and mvn (missing {missing})")


@pytest.mark.parametrize("mode", ["process", "container"])
def test_each_broker_starts_answers_and_stops(mode: provision.Mode) -> None:
    _require_mode(mode)
    ports = Ports.free()
    records: list[provision.Running] = []
    try:
        for broker in BROKERS:
            record = provision.start(broker, mode, ports)
            records.append(record)
            assert record.mode == mode
            assert provision.alive(record)
            ROUND_TRIPS[broker](record.url)
    finally:
        for record in records:
            provision.stop(record)
    for record in records:
        assert not provision.alive(record)
        if record.run_dir:
            assert not Path(record.run_dir).exists()
    assert not tcp_open("127.0.0.1", ports.rabbitmq)
    assert not tcp_open("127.0.0.1", ports.kafka)
    assert not tcp_open("127.0.0.1", ports.postgres)
    assert not tcp_open("127.0.0.1", ports.mariadb)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "txmq.cli", "brokers", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def test_cli_brokers_outlive_up_and_down_stops_exactly_them(tmp_path: Path) -> None:
    _require_mode("process")
    ports = Ports.free()
    env = {
        **os.environ,
        "TXMQ_STATE_DIR": str(tmp_path),
        **{f"TXMQ_PORT_{name.upper()}": str(getattr(ports, name)) for name in ports.__slots__},
    }
    up = _cli("up", "--mode", "process", "--print-env", env=env)
    try:
        assert up.returncode == 0, up.stderr
        printed = dict(line.split("=", 1) for line in up.stdout.splitlines())
        assert printed == {
            "TXMQ_TEST_RABBITMQ_URL": f"rabbitmq://guest:guest@127.0.0.1:{ports.rabbitmq}/",
            "TXMQ_TEST_KAFKA_URL": f"kafka://127.0.0.1:{ports.kafka}",
            "TXMQ_TEST_DATABASE_URL": (
                f"postgresql+psycopg://postgres@127.0.0.1:{ports.postgres}/postgres"
            ),
            "TXMQ_TEST_MYSQL_URL": f"mysql+pymysql://root@127.0.0.1:{ports.mariadb}/txmq",
        }
        # The command has exited; its brokers must not have gone with it.
        _round_trip_rabbitmq(printed["TXMQ_TEST_RABBITMQ_URL"])
        _round_trip_kafka(printed["TXMQ_TEST_KAFKA_URL"])
        _round_trip_sql(printed["TXMQ_TEST_DATABASE_URL"])
        _round_trip_sql(printed["TXMQ_TEST_MYSQL_URL"])

        status = _cli("status", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert [line.split()[:2] for line in status.stdout.splitlines()] == [
            [broker, "running"] for broker in BROKERS
        ]
        assert "guest:guest" not in status.stdout
        again = _cli("up", "--mode", "process", "--print-env", env=env)
        assert again.stdout == up.stdout
        assert "already runs" in again.stderr
    finally:
        down = _cli("down", env=env)
    assert down.returncode == 0, down.stderr
    assert down.stdout.splitlines() == [f"stopped {broker} (process)" for broker in BROKERS]
    assert _cli("status", env=env).returncode == 1
    assert not tcp_open("127.0.0.1", ports.kafka)
    assert not tcp_open("127.0.0.1", ports.rabbitmq)


def test_a_container_whose_owner_was_killed_is_reaped_at_the_next_start() -> None:
    _require_mode("container")
    sleepers = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) for _ in range(2)
    ]
    records: list[provision.Running] = []
    try:
        doomed, survivor = sleepers
        records.append(provision.start("postgres", "container", Ports.free(), owner=doomed.pid))
        doomed.kill()  # kill -9: no chance to stop its broker
        doomed.wait(timeout=30)
        assert provision.alive(records[0])
        records.append(provision.start("postgres", "container", Ports.free(), owner=survivor.pid))
        assert not provision.alive(records[0])
        client = engine.client()
        try:
            left = {c.id for c in client.containers.list(all=True)}
        finally:
            client.close()
        assert records[0].container_id not in left
        # The one whose owner still lives is kept by a third start.
        records.append(provision.start("postgres", "container", Ports.free()))
        assert provision.alive(records[1])
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait(timeout=30)
        for record in records:
            provision.stop(record)
