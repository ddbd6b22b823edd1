"""scripts/brokers.sh: which brokers it asks `txmq brokers up` for, and which it stops again.

The txmq CLI is replaced by a stub that records its arguments, so this runs in milliseconds
and starts nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STUB = r"""#!/usr/bin/env bash
# Called as: $python -m txmq.cli brokers VERB [ARGS...]
shift 3
echo "$*" >> "$STUB_LOG"
case "$1" in
    status)
        printf '%s' "$STUB_STATUS"
        exit "$STUB_STATUS_RC"
        ;;
    up)
        for arg in "$@"; do
            case "$arg" in
                rabbitmq) echo "TXMQ_TEST_RABBITMQ_URL=rabbitmq://stub/" ;;
                kafka) echo "TXMQ_TEST_KAFKA_URL=kafka://stub" ;;
                postgres) echo "TXMQ_TEST_DATABASE_URL=postgresql://stub" ;;
                mariadb) echo "TXMQ_TEST_MYSQL_URL=mysql+pymysql://stub" ;;
            esac
        done
        ;;
esac
"""


def _run(
    tmp_path: Path, *, status: str, status_rc: int, env: dict[str, str] | None = None
) -> list[str]:
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    script = (
        "set -euo pipefail; python=$STUB; source scripts/brokers.sh; ensure_brokers; "
        'echo "$TXMQ_TEST_RABBITMQ_URL $TXMQ_TEST_KAFKA_URL $TXMQ_TEST_DATABASE_URL '
        '$TXMQ_TEST_MYSQL_URL" >> "$STUB_LOG"'
    )
    subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "STUB": str(stub),
            "STUB_LOG": str(log),
            "STUB_STATUS": status,
            "STUB_STATUS_RC": str(status_rc),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return log.read_text().splitlines()


UP_ALL = "up --mode auto --print-env --only rabbitmq --only kafka --only postgres --only mariadb"


def _line(broker: str, state: str) -> str:
    return f"{broker:<9} {state:<11} url{' ' * 40} pids 1 in /tmp/x\n"


def test_brokers_it_starts_are_stopped_when_the_script_exits(tmp_path: Path) -> None:
    calls = _run(tmp_path, status="no brokers started by 'txmq brokers up'\n", status_rc=1)
    assert calls == [
        "status",
        UP_ALL,
        "rabbitmq://stub/ kafka://stub postgresql://stub mysql+pymysql://stub",
        "down --only rabbitmq --only kafka --only postgres --only mariadb",
    ]


def test_brokers_an_earlier_up_runs_are_used_and_left_running(tmp_path: Path) -> None:
    calls = _run(tmp_path, status=_line("postgres", "running"), status_rc=0)
    assert calls[1] == UP_ALL
    assert calls[-1] == "down --only rabbitmq --only kafka --only mariadb"


def test_a_dead_broker_of_an_earlier_up_is_restarted_and_stopped_but_not_the_live_ones(
    tmp_path: Path,
) -> None:
    status = (
        _line("rabbitmq", "running")
        + _line("kafka", "NOT RUNNING")
        + _line("postgres", "running")
        + _line("mariadb", "running")
    )
    calls = _run(tmp_path, status=status, status_rc=1)
    assert calls[-1] == "down --only kafka"


def test_nothing_is_stopped_when_an_earlier_up_runs_everything(tmp_path: Path) -> None:
    status = "".join(_line(b, "running") for b in ("rabbitmq", "kafka", "postgres", "mariadb"))
    calls = _run(tmp_path, status=status, status_rc=0)
    assert not any(call.startswith("down") for call in calls)


@pytest.mark.parametrize("status_rc", [0, 1])
def test_brokers_named_by_the_environment_are_neither_started_nor_stopped(
    tmp_path: Path, status_rc: int
) -> None:
    calls = _run(
        tmp_path,
        status="",
        status_rc=status_rc,
        env={"TXMQ_TEST_KAFKA_URL": "kafka://mine:9092"},
    )
    assert calls[1] == "up --mode auto --print-env --only rabbitmq --only postgres --only mariadb"
    assert calls[2] == "rabbitmq://stub/ kafka://mine:9092 postgresql://stub mysql+pymysql://stub"
    assert calls[3] == "down --only rabbitmq --only postgres --only mariadb"
