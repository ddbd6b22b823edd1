"""``txmq demo saga`` as tests: both forms of the order saga on both brokers, with
PostgreSQL, MariaDB and SQLite, every invariant holding; a violated invariant fails the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine

from txmq.saga import demo
from txmq.saga.demo import FormResult, run

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]


@pytest.fixture(params=["postgres", "mariadb", "sqlite"])
def demo_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'saga.db'}"
    if request.param == "mariadb":
        return str(request.getfixturevalue("txmq_mysql_database"))
    return str(request.getfixturevalue("txmq_database"))


def test_both_forms_hold_every_invariant(
    broker_url: str, demo_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run([broker_url], demo_database, as_json=True)
    document = json.loads(capsys.readouterr().out)
    assert status == 0, document
    assert document["passed"] is True
    assert [r["form"] for r in document["runs"]] == ["orchestrated", "choreographed"]
    for form in document["runs"]:
        assert form["orders"] == {
            "1": "COMPLETED",
            "2": "COMPLETED",
            "3": "COMPLETED",
            "4": "FAILED",
            "5": "FAILED",
        }
        assert form["effects"]["1"] == {
            "charge": 1,
            "refund": 0,
            "reserve": 1,
            "release": 0,
            "deliver": 1,
        }
        # Out of stock: charged and refunded; nothing reserved (rolled back), nothing shipped.
        assert form["effects"]["4"] == {
            "charge": 1,
            "refund": 1,
            "reserve": 0,
            "release": 0,
            "deliver": 0,
        }
    orchestrated, choreographed = document["runs"]
    # The timed-out step: compensated before its late action, which was a no-op.
    assert orchestrated["effects"]["5"] == {
        "charge": 1,
        "refund": 1,
        "reserve": 0,
        "release": 0,
        "deliver": 0,
    }
    # The failure event that overtook its order: nothing charged, nothing refunded.
    assert choreographed["effects"]["5"] == dict.fromkeys(
        ("charge", "refund", "reserve", "release", "deliver"), 0
    )


def test_a_violated_invariant_fails_the_demo(
    monkeypatch: pytest.MonkeyPatch, txmq_memory_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    twice = {"charge": 2, "refund": 0, "reserve": 1, "release": 0, "deliver": 1}
    broken = FormResult("orchestrated", "memory", {1: "COMPLETED"}, {1: twice})
    broken.violations.extend(demo._violations(1, "COMPLETED", twice))

    def fake(broker: object, engine: Engine, *, timeout: float) -> list[FormResult]:
        return [broken]

    monkeypatch.setattr(demo, "run_saga_demo", fake)
    assert run([txmq_memory_url], None) == 1
    out = capsys.readouterr().out
    assert "an effect applied twice" in out
    assert "INVARIANTS VIOLATED" in out
