"""``txmq demo`` as tests, on both brokers, with PostgreSQL and with SQLite: every scenario
passes, the report and the JSON document say so, and a broken scenario fails the run."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, Table, create_engine
from sqlalchemy.orm import Session

import txmq
from txmq import demo
from txmq.demo import SCENARIOS, run, run_demo
from txmq.testing import provision
from txmq.testing.provision import Endpoints, Running

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["postgres", "sqlite"])
def demo_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for the demo: a new PostgreSQL database, or a SQLite file."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'demo.db'}"
    return str(request.getfixturevalue("txmq_database"))


def test_bank_transfer_demo_balances(broker_url: str, engine: Engine) -> None:
    broker = txmq.connect(broker_url)
    try:
        result = run_demo(broker, engine, timeout=90, echo=False)
    finally:
        broker.close()
    assert result.balanced, result
    assert result.retried == 1
    assert result.dead_lettered == 1
    assert result.refunds == 1
    assert result.duplicates_ignored >= 1
    assert result.passed, result.checks
    assert [check.scenario for check in result.checks] == list(SCENARIOS)


def test_every_scenario_passes_and_json_names_each(
    broker_url: str, demo_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run([broker_url], demo_database, as_json=True, timeout=90)

    document = json.loads(capsys.readouterr().out)
    assert status == 0, document
    assert document["passed"] is True
    (broker,) = document["brokers"]
    assert broker["system"] == broker_url.partition(":")[0]
    assert broker["passed"] is True
    assert broker["balances"] == demo.expected_balances()
    assert [s["scenario"] for s in document["scenarios"]] == list(SCENARIOS)
    assert all(s["passed"] and s["broker"] == broker["system"] for s in document["scenarios"])
    assert all(s["detail"] for s in document["scenarios"])


def test_report_has_a_check_mark_per_scenario(
    broker_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run([broker_url], timeout=90)  # on SQLite in a temporary directory

    out = capsys.readouterr().out
    report = out[out.index("txmq demo on sqlite:///") :].splitlines()
    assert status == 0, out
    marked = [line.strip() for line in report if line.startswith("  ")]
    assert [line[2 : 2 + len(s)] for line, s in zip(marked, SCENARIOS, strict=True)] == list(
        SCENARIOS
    )
    assert all(line.startswith("\N{CHECK MARK} ") for line in marked)
    assert report[-1] == f"all {len(SCENARIOS)} checks passed on {report[1].split()[0]}"


def test_a_broken_scenario_is_a_cross_and_exit_1(
    broker_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The shop "forgets" to write its orders: the check-back of the UNKNOWN half message
    # finds no order and rolls it back, which is not what that scenario promises.
    def no_order(session: Session, orders: Table, order_id: int) -> None:
        pass

    monkeypatch.setattr(demo, "_place_order", no_order)

    status = run([broker_url], timeout=90)

    out = capsys.readouterr().out
    assert status == 1, out
    lines = {line.strip()[2:].split("  ")[0]: line.strip() for line in out.splitlines()}
    assert lines[demo.HALF_UNKNOWN].startswith("\N{BALLOT X} ")
    assert "check-back 1: ROLLBACK" in lines[demo.HALF_UNKNOWN]
    others = [s for s in SCENARIOS if s != demo.HALF_UNKNOWN]
    assert all(lines[s].startswith("\N{CHECK MARK} ") for s in others)
    assert f"1 of {len(SCENARIOS)} checks FAILED" in out


def test_no_broker_given_uses_the_provisioned_ones_and_stops_only_its_own(
    rabbitmq_url: str,
    kafka_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Provisioning is stubbed to hand out the session's brokers: RabbitMQ as if an earlier
    # `txmq brokers up` ran it, Kafka as if the demo had to start it.
    calls: list[tuple[str, tuple[str, ...]]] = []
    already = Running(broker="rabbitmq", mode="process", url=rabbitmq_url)

    def up(*, brokers: Iterable[str], **_: object) -> Endpoints:
        calls.append(("up", tuple(brokers)))
        return Endpoints(rabbitmq_url=rabbitmq_url, kafka_url=kafka_url)

    def down(brokers: Iterable[str]) -> list[Running]:
        calls.append(("down", tuple(brokers)))
        return []

    monkeypatch.setattr(provision, "status", lambda: [(already, True)])
    monkeypatch.setattr(provision, "up", up)
    monkeypatch.setattr(provision, "down", down)

    status = run(as_json=True, timeout=90)

    document = json.loads(capsys.readouterr().out)
    assert status == 0, document
    assert [b["system"] for b in document["brokers"]] == ["rabbitmq", "kafka"]
    assert document["database"].startswith("sqlite:///")
    assert calls == [("up", ("rabbitmq", "kafka")), ("down", ("kafka",))]


def test_a_broker_that_cannot_be_reached_exits_2_in_one_redacted_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = run(["rabbitmq://guest:hunter2@127.0.0.1:1/?connect_timeout=1"])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err.startswith("error: BrokerUnavailable: ")
    assert captured.err.count("\n") == 1
    assert "hunter2" not in captured.err
