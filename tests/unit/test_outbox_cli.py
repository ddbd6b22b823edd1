"""``txmq outbox``: operators see and decide records without writing code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from typer.testing import CliRunner

import txmq
from txmq.adapters.memory.adapter import InMemoryBroker
from txmq.cli.root import app
from txmq.outbox import CheckBackPolicy
from txmq.states import LocalTransactionState, RecordState

runner = CliRunner()


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'outbox.db'}"


@pytest.fixture
def producer(database: str) -> txmq.Producer:
    engine = create_engine(database)
    txmq.create_schema(engine)
    return txmq.Producer(
        group="orders",
        engine=engine,
        broker=InMemoryBroker(),
        check_policy=CheckBackPolicy(immunity=timedelta(0), max_checks=1),
    )


def park(producer: txmq.Producer, body: bytes) -> str:
    result = producer.send_in_transaction(
        txmq.Message("t", body), lambda m, a: LocalTransactionState.UNKNOWN, None
    )
    producer.check_back_once()
    assert producer.store.get(result.message_id).state is RecordState.PARKED
    return result.message_id


def outbox(*args: str, database: str) -> tuple[int, str]:
    result = runner.invoke(app, ["outbox", *args, "--database", database])
    return result.exit_code, result.output


def test_status_list_and_decisions(producer: txmq.Producer, database: str) -> None:
    with Session(producer.engine) as session, session.begin():
        producer.stage(session, txmq.Message("t", b"ready"))
    parked = [park(producer, b"a"), park(producer, b"b"), park(producer, b"c")]

    code, output = outbox("status", database=database)
    assert code == 0
    assert "READY        1" in output
    assert "PARKED       3" in output

    code, output = outbox("list", database=database)
    assert code == 0
    assert [line.split()[0] for line in output.splitlines()] == parked

    assert outbox("commit", parked[0], database=database)[0] == 0
    assert outbox("rollback", parked[1], database=database)[0] == 0
    assert outbox("resume", parked[2], database=database)[0] == 0
    states = {i: producer.store.get(i).state for i in parked}
    assert states == {
        parked[0]: RecordState.READY,
        parked[1]: RecordState.ROLLED_BACK,
        parked[2]: RecordState.PREPARED,
    }


def test_deciding_an_unknown_record_fails_clearly(producer: txmq.Producer, database: str) -> None:
    code, output = outbox("commit", "no-such-id", database=database)
    assert code == 1
    assert "no outbox record 'no-such-id'" in output


def test_purge_and_no_password_in_output(producer: txmq.Producer, database: str) -> None:
    code, output = outbox("purge", "--older-than-hours", "0", database=database)
    assert code == 0
    assert "purged 0 records" in output
    result = runner.invoke(
        app,
        ["outbox", "status", "--database", "postgresql+psycopg://u:hunter2@127.0.0.1:1/x"],
    )
    assert "hunter2" not in result.output
    assert result.exit_code == 1
    assert result.output.startswith("error: ")


def test_status_list_and_purge_per_group(producer: txmq.Producer, database: str) -> None:
    broker = InMemoryBroker()
    broker.declare([txmq.Topology("audit", "t")])
    billing = txmq.Producer(
        group="billing",
        engine=producer.engine,
        broker=broker,
        tables=producer.tables,
        check_policy=producer.check_policy,
    )
    with Session(producer.engine) as session, session.begin():
        producer.stage(session, txmq.Message("t", b"orders"))
        billing.stage(session, txmq.Message("t", b"billing 1"), txmq.Message("t", b"billing 2"))
    parked = park(billing, b"parked")

    code, output = outbox("status", database=database)
    assert code == 0
    assert "READY        3" in output
    assert "group billing: PREPARED=0 READY=2 SENT=0 ROLLED_BACK=0 PARKED=1" in output
    assert "group orders: PREPARED=0 READY=1 SENT=0 ROLLED_BACK=0 PARKED=0" in output

    code, output = outbox("status", "--group", "orders", database=database)
    assert "READY        1" in output
    assert "group billing" not in output

    assert outbox("list", "--group", "orders", database=database) == (
        0,
        "no PARKED records in group orders\n",
    )
    code, output = outbox("list", "--group", "orders", "--group", "billing", database=database)
    assert [line.split()[0] for line in output.splitlines()] == [parked]

    billing.relay().drain()
    assert outbox("purge", "--older-than-hours", "0", "--group", "orders", database=database)[
        1
    ].startswith("purged 0 records")
    code, output = outbox(
        "purge", "--older-than-hours", "0", "--group", "billing", database=database
    )
    assert output.startswith("purged 2 records")


def test_relay_needs_its_groups(database: str) -> None:
    for given in ([], ["--group", "orders", "--all-groups"]):
        result = runner.invoke(
            app,
            ["outbox", "relay", *given, "--broker", "kafka://127.0.0.1:1", "--database", database],
        )
        assert result.exit_code == 2
        assert result.output == (
            "error: give the producer groups to relay with --group G (repeatable), "
            "or --all-groups\n"
        )


def test_list_prints_json_lines_and_takes_the_state_in_any_case(
    producer: txmq.Producer, database: str
) -> None:
    parked = park(producer, b"a")
    result = runner.invoke(
        app, ["outbox", "list", "--state", "parked", "--json", "--database", database]
    )
    assert result.exit_code == 0
    [line] = result.stdout.splitlines()
    record = json.loads(line)
    assert {k: record[k] for k in ("id", "group", "topic", "state", "check_count")} == {
        "id": parked,
        "group": "orders",
        "topic": "t",
        "state": "PARKED",
        "check_count": 1,
    }
    assert record["created_at"].endswith("+00:00")


def test_an_empty_listing_says_so_on_stderr(producer: txmq.Producer, database: str) -> None:
    park(producer, b"a")
    for options in (["--state", "failed"], ["--state", "Failed", "--json"]):
        result = runner.invoke(app, ["outbox", "list", *options, "--database", database])
        assert (result.exit_code, result.stdout) == (0, "")
        assert result.stderr == "no FAILED records\n"


def test_status_json_counts_every_state_per_group(producer: txmq.Producer, database: str) -> None:
    with Session(producer.engine) as session, session.begin():
        producer.stage(session, txmq.Message("t", b"ready"))
    park(producer, b"a")
    result = runner.invoke(app, ["outbox", "status", "--json", "--database", database])
    assert result.exit_code == 0
    status = json.loads(result.stdout)
    expected = {state.value: 0 for state in RecordState} | {"READY": 1, "PARKED": 1}
    assert status == {"database": database, "states": expected, "groups": {"orders": expected}}


def test_status_of_an_empty_outbox_says_so(producer: txmq.Producer, database: str) -> None:
    code, output = outbox("status", database=database)
    assert code == 0
    assert output.splitlines()[-1] == "no records"


def test_delayed_records_are_counted_and_listed_with_their_due_time(
    producer: txmq.Producer, database: str
) -> None:
    due = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    message = txmq.Message("t", b"later")
    with Session(producer.engine) as session, session.begin():
        producer.stage(session, message, deliver_at=due)
    code, output = outbox("status", "--json", database=database)
    assert code == 0
    assert json.loads(output)["groups"]["orders"]["DELAYED"] == 1
    code, output = outbox("list", "--state", "delayed", database=database)
    assert (code, "due=2031-05-06 07:08:09" in output) == (0, True)
    code, output = outbox("list", "--state", "delayed", "--json", database=database)
    assert json.loads(output)["deliver_at"] == due.isoformat()
