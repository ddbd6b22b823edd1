"""``txmq worker`` and ``txmq consume`` as an operator runs them: subprocesses on a real
broker and a private PostgreSQL, probed over HTTP through a database restart, stopped by
SIGTERM, with nothing lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select
from sqlalchemy.orm import Session

import txmq
from txmq.consumer import make_inbox_table
from txmq.outbox import Producer, make_outbox_tables
from txmq.testing import provision
from txmq.testing.provision import Ports, ProvisionError, processes
from txmq.testing.provision.processes import RestartablePostgres
from txmq.testing.provision.state import Running

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]

SRC = Path(__file__).resolve().parents[2] / "src"
#: Longest wait for a condition that must come true (generous: the machine is shared).
WAIT = 90.0

CONSUMER_MODULE = textwrap.dedent(
    """
    import os

    from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine

    from txmq.consumer import Consumer, make_inbox_table


    def make():
        metadata = MetaData()
        inbox = make_inbox_table(metadata, name=os.environ["T_INBOX"])
        applied = Table(
            os.environ["T_APPLIED"],
            metadata,
            Column("row", Integer, primary_key=True, autoincrement=True),
            Column("message_id", String(80), nullable=False),
        )
        consumer = Consumer(
            broker=os.environ["T_BROKER"],
            engine=create_engine(os.environ["T_DATABASE"]),
            group=os.environ["T_GROUP"],
            inbox=inbox,
            poll_interval=0.2,
        )

        @consumer.handler(os.environ["T_TOPIC"])
        def record(message, session):
            session.execute(applied.insert().values(message_id=message.id))

        return consumer
    """
)


def wait_for(condition: Callable[[], bool], *, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def probe(port: int, path: str) -> tuple[int, str]:
    """(HTTP status, body) of ``GET path``; (0, error) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


@dataclass
class Process:
    """A txmq command running as a subprocess, with its probe port."""

    popen: subprocess.Popen[str]
    port: int

    def status(self, path: str) -> int:
        return probe(self.port, path)[0]

    def terminate(self, timeout: float = 60.0) -> tuple[int, str]:
        """SIGTERM; (exit code, stderr)."""
        self.popen.send_signal(signal.SIGTERM)
        try:
            _, stderr = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            _, stderr = self.popen.communicate()
            raise AssertionError(f"still running {timeout:.0f} s after SIGTERM: {stderr}") from None
        return self.popen.returncode, stderr


def launch(args: list[str], env: dict[str, str], cwd: Path) -> Process:
    """Start ``txmq ARGS --metrics-port 0``; return once it has started its loops."""
    popen = subprocess.Popen(
        [sys.executable, "-m", "txmq.cli", *args, "--metrics-port", "0"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert popen.stdout is not None
    first = popen.stdout.readline()
    if not first.startswith("probes on http://127.0.0.1:"):
        popen.kill()
        raise AssertionError((first, popen.communicate()))
    port = int(first.rstrip().rpartition(":")[2])
    started = popen.stdout.readline()
    assert started.endswith("started\n"), (started, popen.poll())
    return Process(popen, port)


@pytest.fixture
def running() -> Iterator[list[Process]]:
    processes: list[Process] = []
    yield processes
    for process in processes:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.communicate()


def test_worker_and_consumer_processes_survive_a_database_restart_and_stop_on_sigterm(
    broker_url: str,
    private_postgres: RestartablePostgres,
    tmp_path: Path,
    running: list[Process],
) -> None:
    suffix = uuid.uuid4().hex[:10]
    topic, group, producer_group = f"t{suffix}.evt", f"g{suffix}", f"p{suffix}"
    metadata = MetaData()
    tables = make_outbox_tables(metadata, prefix=f"o{suffix}_")
    make_inbox_table(metadata, name=f"inbox_{suffix}")
    applied = Table(
        f"applied_{suffix}",
        metadata,
        Column("row", Integer, primary_key=True, autoincrement=True),
        Column("message_id", String(80), nullable=False),
    )
    engine = create_engine(private_postgres.url)
    metadata.create_all(engine)
    (tmp_path / f"app_{suffix}.py").write_text(CONSUMER_MODULE)
    env = os.environ | {
        "PYTHONPATH": f"{SRC}{os.pathsep}{tmp_path}",
        "T_BROKER": broker_url,
        "T_DATABASE": private_postgres.url,
        "T_GROUP": group,
        "T_TOPIC": topic,
        "T_INBOX": f"inbox_{suffix}",
        "T_APPLIED": f"applied_{suffix}",
    }
    env.pop("TXMQ_DATABASE_URL", None)
    env.pop("TXMQ_BROKER_URL", None)
    consumer = launch(["consume", f"app_{suffix}:make", "--concurrency", "2"], env, tmp_path)
    running.append(consumer)
    worker_args = ["worker", "--group", producer_group, "--broker", broker_url]
    worker_args += ["--database", private_postgres.url, "--prefix", f"o{suffix}_"]
    worker = launch([*worker_args, "--log-format", "json"], env, tmp_path)
    running.append(worker)
    second_worker = launch([*worker_args, "--lanes", "1"], env, tmp_path)  # several may run
    running.append(second_worker)
    processes = (worker, second_worker, consumer)

    producer = Producer(group=producer_group, engine=engine, tables=tables)
    staged: set[str] = set()

    def stage(count: int) -> None:
        messages = [txmq.Message(topic, f"m{len(staged) + n}".encode()) for n in range(count)]
        with Session(engine) as session, session.begin():
            producer.stage(session, *messages)
        staged.update(message.id for message in messages)

    def applied_ids() -> list[str]:
        with engine.connect() as connection:
            return list(connection.execute(select(applied.c.message_id)).scalars())

    for process in processes:
        wait_for(lambda p=process: p.status("/readyz") == 200, what="ready")  # type: ignore[misc]
        assert process.status("/healthz") == 200
    stage(200)
    wait_for(lambda: set(applied_ids()) == staged, what="the first messages consumed")

    metrics = {probe(process.port, "/metrics")[1] for process in processes}
    assert any("txmq_relay_published" in text for text in metrics)
    assert any("txmq_consumed" in text for text in metrics)
    # The worker samples its groups' outbox gauges as soon as it starts.
    sampled = f'txmq_outbox_records{{group="{producer_group}",state="READY"}}'
    assert any(sampled in text for text in metrics)

    private_postgres.stop_server()
    for process in processes:
        wait_for(lambda p=process: p.status("/readyz") == 503, what="not ready while down")  # type: ignore[misc]
        body = json.loads(probe(process.port, "/readyz")[1])
        assert "database" in body["failing"], body
        assert process.status("/healthz") == 200  # an outage is waited out, not fatal
    private_postgres.start_server()
    for process in processes:
        wait_for(lambda p=process: p.status("/readyz") == 200, what="ready again by itself")  # type: ignore[misc]

    engine.dispose()  # its pooled connections died with the server
    stage(20)
    wait_for(lambda: set(applied_ids()) == staged, what="the later messages consumed")

    for process in processes:
        code, stderr = process.terminate()
        assert code == 0, stderr
        assert "error:" not in stderr
    ids = applied_ids()
    assert set(ids) == staged
    assert len(ids) == len(staged)  # the inbox applied each exactly once
    engine.dispose()


class PrivateBroker:
    """A broker of this test only, as processes; stopped and started again on its data, as
    :class:`RestartablePostgres` does for PostgreSQL (RabbitMQ's queues and Kafka's topics
    are durable, so what they held is there again)."""

    def __init__(self, broker: Literal["rabbitmq", "kafka"]) -> None:
        self.ports = Ports.free()
        self.record: Running | None = provision.start(broker, "process", self.ports)
        self.url = self.record.url + ("?exchange=txmq" if broker == "rabbitmq" else "")

    def stop(self) -> None:
        if self.record is not None:
            processes.stop(self.record, keep_data=True)

    def start_again(self) -> None:
        assert self.record is not None
        self.record = processes.start_again(self.record, self.ports)

    def close(self) -> None:
        if self.record is not None:
            processes.stop(self.record)
            self.record = None


@pytest.fixture(params=["rabbitmq", "kafka"])
def private_broker(request: pytest.FixtureRequest) -> Iterator[PrivateBroker]:
    try:
        broker = PrivateBroker(request.param)
    except ProvisionError as exc:
        pytest.fail(f"cannot start a private {request.param}: {exc}")
    yield broker
    broker.close()


def test_worker_and_consumer_processes_wait_out_a_broker_stop(
    private_broker: PrivateBroker,
    database_url: str,
    tmp_path: Path,
    running: list[Process],
) -> None:
    suffix = uuid.uuid4().hex[:10]
    topic, group, producer_group = f"t{suffix}.evt", f"g{suffix}", f"p{suffix}"
    metadata = MetaData()
    tables = make_outbox_tables(metadata, prefix=f"o{suffix}_")
    make_inbox_table(metadata, name=f"inbox_{suffix}")
    applied = Table(
        f"applied_{suffix}",
        metadata,
        Column("row", Integer, primary_key=True, autoincrement=True),
        Column("message_id", String(80), nullable=False),
    )
    engine = create_engine(database_url)
    metadata.create_all(engine)
    try:
        broker_url = private_broker.url
        (tmp_path / f"app_{suffix}.py").write_text(CONSUMER_MODULE)
        env = os.environ | {
            "PYTHONPATH": f"{SRC}{os.pathsep}{tmp_path}",
            "T_BROKER": broker_url,
            "T_DATABASE": database_url,
            "T_GROUP": group,
            "T_TOPIC": topic,
            "T_INBOX": f"inbox_{suffix}",
            "T_APPLIED": f"applied_{suffix}",
        }
        consumer = launch(["consume", f"app_{suffix}:make"], env, tmp_path)
        running.append(consumer)
        worker_args = ["worker", "--group", producer_group, "--broker", broker_url]
        worker_args += ["--database", database_url, "--prefix", f"o{suffix}_"]
        worker = launch(worker_args, env, tmp_path)
        running.append(worker)
        processes_ = (worker, consumer)
        producer = Producer(group=producer_group, engine=engine, tables=tables)
        staged: set[str] = set()

        def stage(count: int) -> None:
            messages = [txmq.Message(topic, f"m{len(staged) + n}".encode()) for n in range(count)]
            with Session(engine) as session, session.begin():
                producer.stage(session, *messages)
            staged.update(message.id for message in messages)

        def applied_ids() -> list[str]:
            with engine.connect() as connection:
                return list(connection.execute(select(applied.c.message_id)).scalars())

        stage(10)
        wait_for(lambda: set(applied_ids()) == staged, what="the first messages consumed")

        private_broker.stop()
        for process in processes_:
            wait_for(lambda p=process: p.status("/readyz") == 503, what="not ready while down")  # type: ignore[misc]
            body = json.loads(probe(process.port, "/readyz")[1])
            assert "broker" in body["failing"], body
            assert process.status("/healthz") == 200
        stage(10)  # staged while the broker is down: published once it is back
        private_broker.start_again()
        for process in processes_:
            wait_for(lambda p=process: p.status("/readyz") == 200, what="ready again by itself")  # type: ignore[misc]
        wait_for(lambda: set(applied_ids()) == staged, what="the later messages consumed")

        for process in processes_:
            code, stderr = process.terminate()
            assert code == 0, stderr
            assert "error:" not in stderr
        ids = applied_ids()
        assert set(ids) == staged
        assert len(ids) == len(staged)
    finally:
        metadata.drop_all(engine)
        engine.dispose()
