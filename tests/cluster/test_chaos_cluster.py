"""``txmq chaos --schedule cluster`` on each broker, on demand (about five minutes each, six
broker processes): ``TXMQ_CLUSTER_TESTS=1 pytest tests/cluster/test_chaos_cluster.py``.

Each run starts its own three-node cluster on ``$TXMQ_CLUSTER_PORT_BASE`` (default 25600)
and its own PostgreSQL, kills a node, partitions one and restarts all three in turn, and
stops everything at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from txmq.chaos import run, schedule

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]

SEED = 20_261_201


@pytest.mark.parametrize("system", ["rabbitmq", "kafka"])
def test_cluster_schedule_keeps_every_invariant(system: str, tmp_path: Path) -> None:
    report_path = tmp_path / "chaos.json"
    said: list[str] = []

    code = run(system, None, schedule="cluster", seed=SEED, json_path=report_path, say=said.append)

    summary = "\n".join(said)
    report = json.loads(report_path.read_text())
    (broker_run,) = report["runs"]
    assert code == 0, summary
    assert broker_run["passed"], summary
    assert broker_run["private_broker"] is True
    faults = {fault["name"]: fault for fault in broker_run["faults"]}
    # The partition needs root (per-node group ids and iptables): elsewhere it says why.
    can_partition = os.geteuid() == 0
    for name in schedule.CLUSTER_FAULTS:
        if name == schedule.NODE_PARTITION and not can_partition:
            assert faults[name]["ran"] is False
            assert "root" in faults[name]["reason"]
            continue
        assert faults[name]["ran"], (name, faults[name])
        assert faults[name]["count"] == 1
        assert faults[name]["recovery_s"] is not None
    assert set(faults) == {*schedule.CLUSTER_FAULTS, "poison-messages"}
    invariants = broker_run["invariants"]
    assert invariants["lost"] == invariants["applied_twice"] == 0
    assert invariants["rolled_back_delivered"] == invariants["order_violations"] == 0
    assert invariants["stalls"] == 0
    assert invariants["money_conserved"] is True
    assert invariants["dlq_actual"] == invariants["dlq_expected"] > 0
    assert invariants["aborted_reads"] == (0 if system == "kafka" else None)
    counts = broker_run["counts"]
    assert counts["committed"] > 100
    assert counts["failed"] > 0
    assert counts["refunded"] > 0
