"""``txmq demo --crash``: the worker and the consumer are SIGKILLed midway and started
again, and every invariant holds (on a private RabbitMQ and PostgreSQL it starts itself)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from txmq.chaos import schedule

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]


COMMAND = ["demo", "--crash", "--broker", "rabbitmq", "--seed", "7", "--json"]


def test_demo_crash_kills_the_worker_and_the_consumer_and_keeps_every_invariant() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "txmq.cli", *COMMAND],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["schedule"] == schedule.CRASH
    assert report["seed"] == 7
    (broker_run,) = report["runs"]
    faults = {fault["name"]: fault for fault in broker_run["faults"]}
    for name in (schedule.RELAY_AFTER_CONFIRM, schedule.CONSUMER_AFTER_DB_COMMIT):
        assert faults[name]["ran"], faults[name]
        assert faults[name]["count"] == 1
        assert faults[name]["recovery_s"] is not None
    assert all(fault["ran"] for fault in faults.values())  # it claims nothing else
    invariants = broker_run["invariants"]
    assert invariants["lost"] == invariants["applied_twice"] == 0
    assert invariants["rolled_back_delivered"] == invariants["stalls"] == 0
    assert invariants["money_conserved"] is True
    assert invariants["dlq_actual"] == invariants["dlq_expected"]
    assert broker_run["counts"]["committed"] > 0
