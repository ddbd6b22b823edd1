"""How ``txmq worker`` and ``txmq consume`` end when they cannot work: a configuration error
prints one line and exits 2 at once; a loop that dies makes the process exit 1 within 10 s."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import txmq
from txmq.consumer import make_inbox_table
from txmq.outbox import Producer, make_outbox_tables

SRC = Path(__file__).resolve().parents[2] / "src"
#: The contract: a process whose loop died is gone within this long.
EXITS_WITHIN = 10.0
#: Longest time for anything else (generous: the machine is shared).
WAIT = 90.0

EXIT_LOOP_DIED = 1
EXIT_CONFIGURATION = 2


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``txmq ARGS`` to its end; (exit code, stderr)."""
    environment = (env or dict(os.environ)) | {"PYTHONPATH": f"{SRC}{os.pathsep}{cwd}"}
    environment.pop("TXMQ_DATABASE_URL", None)
    environment.pop("TXMQ_BROKER_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "txmq.cli", *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    return done.returncode, done.stderr


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


def test_worker_with_a_bad_broker_url_exits_2(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    code, stderr = run(
        ["worker", "--group", "g", "--broker", "nats://u:s3cret@h/", "--database", database],
        tmp_path,
    )
    assert code == EXIT_CONFIGURATION
    assert "unknown broker URL scheme 'nats'" in one_error_line(stderr)
    assert "s3cret" not in stderr


def test_worker_with_a_bad_database_url_exits_2(tmp_path: Path) -> None:
    code, stderr = run(
        ["worker", "--group", "g", "--broker", "kafka://127.0.0.1:1", "--database", "nope"],
        tmp_path,
    )
    assert code == EXIT_CONFIGURATION
    assert "SQLAlchemy URL" in one_error_line(stderr)


@pytest.mark.broker
@pytest.mark.database
def test_worker_without_its_schema_exits_2(
    broker_url: str, database_url: str, tmp_path: Path
) -> None:
    args = ["worker", "--group", "g", "--broker", broker_url, "--database", database_url]
    code, stderr = run([*args, "--prefix", f"none{uuid.uuid4().hex[:8]}_"], tmp_path)
    assert code == EXIT_CONFIGURATION
    assert "txmq's tables are missing" in one_error_line(stderr)


@pytest.mark.broker
@pytest.mark.database
def test_worker_refused_by_the_database_exits_2_without_the_password(
    broker_url: str, database_url: str, tmp_path: Path
) -> None:
    url = make_url(database_url)
    refused = f"postgresql+psycopg://no_such_role:s3cret-pw@{url.host}:{url.port}/postgres"
    args = ["worker", "--group", "g", "--broker", broker_url, "--database", refused]
    code, stderr = run(args, tmp_path)
    assert code == EXIT_CONFIGURATION
    assert 'role "no_such_role" does not exist' in one_error_line(stderr)
    assert "s3cret-pw" not in stderr


@pytest.fixture
def outbox_prefix(database_url: str) -> Iterator[str]:
    prefix = f"x{uuid.uuid4().hex[:8]}_"
    engine = create_engine(database_url)
    metadata = MetaData()
    make_outbox_tables(metadata, prefix=prefix)
    metadata.create_all(engine)
    yield prefix
    metadata.drop_all(engine)
    engine.dispose()


@pytest.mark.broker
@pytest.mark.database
def test_worker_refused_by_rabbitmq_exits_2_without_the_password(
    rabbitmq_url: str, database_url: str, outbox_prefix: str, tmp_path: Path
) -> None:
    url = make_url(rabbitmq_url.replace("rabbitmq://", "postgresql://", 1))
    wrong = rabbitmq_url.replace(f":{url.password}@", ":wrong-pw-9@", 1)
    assert wrong != rabbitmq_url
    args = ["worker", "--group", "g", "--broker", wrong, "--database", database_url]
    code, stderr = run([*args, "--prefix", outbox_prefix], tmp_path)
    assert code == EXIT_CONFIGURATION
    assert "ACCESS_REFUSED" in one_error_line(stderr)
    assert "wrong-pw-9" not in stderr


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("no_such_module_x:consumer", "cannot import 'no_such_module_x'"),
        ("json:no_such_name", "module 'json' has no 'no_such_name'"),
        ("json:JSONDecodeError", "json:JSONDecodeError() raised TypeError"),
        ("json:__name__", "is a str, not a txmq Consumer"),
        ("json", "must be given as package.module:name"),
    ],
)
def test_consume_of_something_that_is_not_a_consumer_exits_2(
    target: str, says: str, tmp_path: Path
) -> None:
    code, stderr = run(["consume", target], tmp_path)
    assert code == EXIT_CONFIGURATION
    assert says in one_error_line(stderr)


DYING_CONSUMER = textwrap.dedent(
    """
    import os
    import pathlib
    import time

    from sqlalchemy import MetaData, create_engine

    from txmq.consumer import Consumer, make_inbox_table


    class Crash(BaseException):
        "Not an Exception: the worker that meets it dies."


    metadata = MetaData()
    consumer = Consumer(
        broker=os.environ["T_BROKER"],
        engine=create_engine(os.environ["T_DATABASE"]),
        group=os.environ["T_GROUP"],
        inbox=make_inbox_table(metadata, name=os.environ["T_INBOX"]),
        poll_interval=0.2,
    )


    @consumer.handler(os.environ["T_TOPIC"])
    def crash(message, session):
        pathlib.Path(os.environ["T_MARK"]).write_text(str(time.time()))
        raise Crash("the handler crashed")
    """
)


@pytest.mark.broker
@pytest.mark.database
def test_consume_without_its_inbox_table_exits_2(
    broker_url: str, database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "dying.py").write_text(DYING_CONSUMER)
    env = dict(os.environ) | {
        "T_BROKER": broker_url,
        "T_DATABASE": database_url,
        "T_GROUP": f"g{uuid.uuid4().hex[:8]}",
        "T_TOPIC": f"t{uuid.uuid4().hex[:8]}.evt",
        "T_INBOX": f"no_inbox_{uuid.uuid4().hex[:8]}",
        "T_MARK": str(tmp_path / "mark"),
    }
    code, stderr = run(["consume", "dying:consumer"], tmp_path, env)
    assert code == EXIT_CONFIGURATION
    assert "txmq's tables are missing" in one_error_line(stderr)


@pytest.mark.broker
@pytest.mark.database
def test_consume_exits_1_within_10_s_when_a_worker_dies(
    broker_url: str, database_url: str, outbox_prefix: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, inbox_name, mark = f"t{suffix}.evt", f"inbox_{suffix}", tmp_path / "mark"
    engine = create_engine(database_url)
    metadata = MetaData()
    inbox = make_inbox_table(metadata, name=inbox_name)
    metadata.create_all(engine)
    (tmp_path / "dying.py").write_text(DYING_CONSUMER)
    env = dict(os.environ) | {
        "PYTHONPATH": f"{SRC}{os.pathsep}{tmp_path}",
        "T_BROKER": broker_url,
        "T_DATABASE": database_url,
        "T_GROUP": f"g{suffix}",
        "T_TOPIC": topic,
        "T_INBOX": inbox_name,
        "T_MARK": str(mark),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "txmq.cli", "consume", "dying:consumer"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "consumer started\n", process.poll()
        producer = Producer(
            group=f"p{suffix}",
            engine=engine,
            broker=broker_url,
            tables=make_outbox_tables(MetaData(), prefix=outbox_prefix),
        )
        with Session(engine) as session, session.begin():
            producer.stage(session, txmq.Message(topic, b"crash"))
        producer.relay().drain()
        producer.close()
        _, stderr = process.communicate(timeout=WAIT)
        exited = time.time()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        metadata.drop_all(engine, tables=[inbox])
        engine.dispose()
    assert process.returncode == EXIT_LOOP_DIED, stderr
    assert exited - float(mark.read_text()) < EXITS_WITHIN
    assert "Crash: the handler crashed" in one_error_line(stderr.replace("Traceback", "-"))
