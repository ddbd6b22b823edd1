"""``python -m benchmarks --smoke`` on each broker: the command runs end to end and its report
has every figure, with positive numbers, so that the benchmark never rots."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def expected_figures(broker: str) -> set[str]:
    relay = {
        "rabbitmq": ("raw_pipelined", "raw_confirm_each"),
        "kafka": ("raw_transactional", "raw_idempotent"),
    }[broker]
    names = {
        f"relay.{broker}.{name}"
        for name in (*relay, "naive", "empty", "history", "delayed_waiting")
    }
    names |= {f"relay.{broker}.history_vs_naive", f"cpu.relay.{broker}", f"cpu.raw.{broker}"}
    names |= {f"wal.{broker}", f"wal.{broker}.plain_row", f"dead_tuples.{broker}"}
    names |= {
        f"consumer.{broker}.{name}"
        for name in (
            *("raw", "pg_commits", "batch", "per_message", "auto", "async_per_message"),
            *("sqlalchemy_sync_commits", "sqlalchemy_async_commits"),
            *("inbox_floor", "batch_vs_floor"),
        )
    }
    names |= {f"cpu.consumer.{broker}.{name}" for name in ("raw", "batch", "per_message", "auto")}
    names |= {"staging.stage", "staging.plain_insert", "staging.async_stage"}
    names |= {"staging.async_plain_insert", "staging.async_vs_sync"}
    for rate in (300, 1000):
        names |= {f"latency.{broker}.{rate}.{p}" for p in ("p50", "p99", "p99.9", "achieved")}
        names |= {f"latency.{broker}.{rate}.{where}_backlog" for where in ("outbox", "broker")}
        names |= {f"cpu.e2e.{broker}.{rate}.{role}" for role in ("producer", "consumer")}
    names |= {f"checkback.{broker}.median", f"checkback.{broker}.max"}
    names |= {f"mysql.{broker}.{name}" for name in ("relay", "wakeup")}
    names |= {f"mysql.{broker}.{name}_postgresql" for name in ("relay", "wakeup")}
    return names


def run_benchmark(cwd: Path, arguments: list[str]) -> subprocess.CompletedProcess[str]:
    """``python -m <arguments>`` with the checkout's ``src`` and root importable; it must
    exit 0 within 240 s."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


#: Figures the issue sets a target for, and the baseline each is compared with.
TARGETED = {
    "relay.{b}.empty": True,
    "relay.{b}.history": True,
    "consumer.{b}.batch": True,
    "consumer.{b}.per_message": True,
    "consumer.{b}.async_per_message": True,
    "staging.stage": True,
    "staging.async_stage": True,
    "latency.{b}.1000.p99": False,
    "latency.{b}.1000.p99.9": False,
    "checkback.{b}.median": False,
}


def test_smoke_report_has_every_figure(
    broker_url: str, database_url: str, mysql_url: str, tmp_path: Path
) -> None:
    broker = "kafka" if broker_url.startswith("kafka") else "rabbitmq"
    out = tmp_path / "out.json"
    done = run_benchmark(
        tmp_path,
        [
            "benchmarks",
            "--smoke",
            "--brokers",
            broker,
            f"--{broker}",
            broker_url,
            "--database",
            database_url,
            "--mysql",
            mysql_url,
            "--json",
            str(out),
            # The producer service in two processes: that path runs too.
            "--latency-producers",
            "2",
        ],
    )

    report = json.loads(out.read_text())
    figures = report["figures"]
    assert set(figures) == expected_figures(broker)
    for name, figure in figures.items():
        assert figure["samples"], name
        # A backlog may be empty all along, and a smoke run's CPU time may round to nothing
        # (a raw loop over a few hundred messages); everything else is a positive
        # measurement.
        least = 0 if figure["unit"] == "messages" or name.startswith("cpu.") else 1e-12
        assert all(value >= least for value in figure["samples"]), (name, figure["samples"])
        assert figure["min"] <= figure["median"] <= figure["max"], name
        if figure["baseline"] is not None:
            assert figure["baseline"] in figures, name
            if all(figures[figure["baseline"]]["samples"]):  # else no ratio: see above
                assert figure["ratio"]["median"] > 0, name
    for template, has_baseline in TARGETED.items():
        figure = figures[template.format(b=broker)]
        assert figure["target"]["met"] in (True, False), template
        assert (figure["ratio"] is not None) == has_baseline, template
    assert report["machine"]["cpus"] >= 1
    assert report["versions"]["txmq"]
    assert report["servers"]["postgresql"]["server_version"]
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    # The table on stdout names every figure too.
    assert all(name in done.stdout for name in figures)


def test_the_wal_position_counts_a_commit_that_is_not_yet_written_out(database_url: str) -> None:
    """The test database runs with ``synchronous_commit=off``: a commit's WAL stays in the
    buffers until the WAL writer's next round, so the *write* position
    (``pg_current_wal_lsn``) may not have moved right after it. The benchmark reads the
    *insert* position, which every WAL record moves at once."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import database
    finally:
        sys.path.remove(str(ROOT))
    engine = sqlalchemy.create_engine(database_url)
    table = f"bench_wal_probe_{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE TABLE {table} (b int)"))
        try:
            for attempt in range(20):
                before = database.wal_position(engine)
                with engine.begin() as connection:
                    connection.execute(sqlalchemy.text(f"INSERT INTO {table} VALUES (1)"))
                assert database.wal_position(engine) > before, attempt
        finally:
            with engine.begin() as connection:
                connection.execute(sqlalchemy.text(f"DROP TABLE {table}"))
    finally:
        engine.dispose()


def test_the_cursor_probe_runs_and_reports_its_ratios(
    broker_url: str, database_url: str, tmp_path: Path
) -> None:
    """``python -m benchmarks.cursor_probe``, tiny: the on-demand design probe never rots."""
    broker = "kafka" if broker_url.startswith("kafka") else "rabbitmq"
    done = run_benchmark(
        tmp_path,
        [
            *("benchmarks.cursor_probe", "--broker", broker),
            *("--url", broker_url, "--database", database_url),
            *("--count", "300", "--history", "500", "--rounds", "1"),
        ],
    )
    for name in ("raw", "relay", "cursor", "cursor/relay"):
        assert re.search(rf"^{broker} {name} .* msg/s", done.stdout, re.MULTILINE), done.stdout
    ratio = r"ratio \d+\.\d\dx \(\d+\.\d\d\.\.\d+\.\d\d\)$"
    for name in ("cursor", "cursor/relay"):
        assert re.search(rf"^{broker} {name} .* {ratio}", done.stdout, re.MULTILINE), done.stdout
    for name in ("wal.relay", "wal.cursor", "stalled"):
        assert re.search(rf"^{broker} {name} +[\d.,]+ ", done.stdout, re.MULTILINE), done.stdout


def test_the_publish_cost_benchmark_runs_and_reports_its_ratios(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    """``python -m benchmarks.publish_cost``, tiny: the on-demand publish comparison never
    rots."""
    done = run_benchmark(
        tmp_path,
        [
            *("benchmarks.publish_cost", "--url", rabbitmq_url),
            *("--count", "300", "--rounds", "1", "--json", str(tmp_path / "cost.json")),
        ],
    )
    report = json.loads((tmp_path / "cost.json").read_text())
    assert set(report) == {"publish.raw", "publish.txmq", "cpu.raw", "cpu.txmq"}
    assert all(entry["median"] > 0 for entry in report.values())
    assert report["publish.txmq"]["ratio"]["median"] > 0
    assert re.search(r"^publish\.txmq .* msg/s +\d+\.\d\dx", done.stdout, re.MULTILINE)
