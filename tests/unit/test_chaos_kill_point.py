"""The chaos services' kill points (``TXMQ_CHAOS_KILL``) and broker options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from txmq import ConfigurationError
from txmq.chaos.scenario import (
    ENV_BROKER_OPTIONS,
    ENV_SCENARIO,
    KILL_BEFORE_DB_COMMIT,
    KILL_IN_EXECUTOR,
    WOKE,
    KillPoint,
    Scenario,
)


@pytest.mark.parametrize(
    "spec",
    ["executor", "executor:0", "nowhere:1", "executor:1:explode", "executor:1:sleep=x"],
)
def test_a_malformed_kill_point_is_refused(spec: str) -> None:
    with pytest.raises(ConfigurationError, match="TXMQ_CHAOS_KILL"):
        KillPoint(spec)


def test_a_sleep_happens_once_at_its_arrival_then_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    point = KillPoint(f"{KILL_BEFORE_DB_COMMIT}:2:sleep=0")

    point.reached(KILL_IN_EXECUTOR)  # another point: not counted
    point.reached(KILL_BEFORE_DB_COMMIT)
    assert WOKE not in capsys.readouterr().err
    point.reached(KILL_BEFORE_DB_COMMIT)
    assert f"{WOKE} {KILL_BEFORE_DB_COMMIT}" in capsys.readouterr().err
    point.reached(KILL_BEFORE_DB_COMMIT)
    assert point.point is None
    assert capsys.readouterr().err == ""


def test_broker_options_go_into_this_process_url_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = Scenario("r1", "kafka://127.0.0.1:9", "postgresql://x", str(tmp_path), 1.0, 7)
    monkeypatch.setenv(ENV_SCENARIO, str(scenario.save()))
    assert Scenario.from_env() == scenario
    monkeypatch.setenv(ENV_BROKER_OPTIONS, "max.poll.interval.ms=10000")

    changed = Scenario.from_env()

    assert changed.broker_url == "kafka://127.0.0.1:9?max.poll.interval.ms=10000"
    assert json.loads(Path(tmp_path, "scenario.json").read_text())["broker_url"] == (
        scenario.broker_url
    )
