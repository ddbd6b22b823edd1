"""``txmq chaos`` short schedule on each broker: every single-node fault this machine can
inject is injected, and every invariant holds.

Each run starts its own broker and PostgreSQL as processes (never the shared ones: they are
killed, paused and restarted), so it needs the brokers' packages, not their URLs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from txmq.chaos import run, schedule

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]

SEED = 20_261_201


@pytest.mark.parametrize("system", ["rabbitmq", "kafka"])
def test_short_schedule_keeps_every_invariant(system: str, tmp_path: Path) -> None:
    report_path = tmp_path / "chaos.json"
    said: list[str] = []

    code = run(system, None, schedule="short", seed=SEED, json_path=report_path, say=said.append)

    summary = "\n".join(said)
    report = json.loads(report_path.read_text())
    (broker_run,) = report["runs"]
    assert code == 0, summary
    assert report["passed"], summary
    assert broker_run["passed"], summary
    assert report["seed"] == SEED
    assert {"python", "txmq"} <= set(report["versions"])
    faults = {fault["name"]: fault for fault in broker_run["faults"]}
    for name in schedule.INJECTED:
        if system != "kafka" and name in schedule.KAFKA_ONLY:
            assert faults[name]["ran"] is False
            assert faults[name]["reason"] == schedule.KAFKA_ONLY[name]
            continue
        assert faults[name]["ran"], (name, faults[name])
        assert faults[name]["count"] >= 1
        assert faults[name]["recovery_s"] is not None
    invariants = broker_run["invariants"]
    assert invariants["lost"] == invariants["applied_twice"] == 0
    assert invariants["rolled_back_delivered"] == invariants["order_violations"] == 0
    assert invariants["stalls"] == 0
    assert invariants["money_conserved"] is True
    assert invariants["dlq_actual"] == invariants["dlq_expected"] > 0
    assert invariants["aborted_reads"] == (0 if system == "kafka" else None)
    counts = broker_run["counts"]
    # Every mode was exercised: some transfers rolled back, some refunded, some poison.
    assert counts["committed"] > 100
    assert counts["failed"] > 0
    assert counts["refunded"] > 0
    assert counts["poison"] > 0
    assert "all invariants hold" in summary
