"""``txmq chaos`` refuses what it cannot run in one line, before starting anything."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from txmq.chaos.runner import system_of
from txmq.cli.root import app
from txmq.errors import ConfigurationError


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--schedule", "nope"], {}, "unknown schedule 'nope'"),
        (
            ["--schedule", "cluster", "--broker", "kafka"],
            {"TXMQ_CLUSTER_PORT_BASE": "65500"},
            "TXMQ_CLUSTER_PORT_BASE must be a port number",
        ),
    ],
)
def test_chaos_refuses_a_schedule_it_cannot_run_in_one_line(
    args: list[str], env: dict[str, str], says: str
) -> None:
    result = CliRunner().invoke(app, ["chaos", *args], env=env)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert says in lines[0]


@pytest.mark.parametrize(
    ("target", "system"),
    [
        ("rabbitmq", "rabbitmq"),
        ("amqp://guest:guest@127.0.0.1:5672/", "rabbitmq"),
        ("rabbitmqs://guest:guest@127.0.0.1:5671/", "rabbitmq"),
        ("AMQPS://guest:guest@127.0.0.1:5671/", "rabbitmq"),
        ("kafka://127.0.0.1:9092", "kafka"),
    ],
)
def test_chaos_knows_a_broker_by_every_scheme_txmq_connect_takes(target: str, system: str) -> None:
    assert system_of(target) == system


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("memory://chaos", "runs on rabbitmq or kafka, not memory"),
        ("redis://:secret@127.0.0.1:6379/0", "unknown broker URL scheme"),
    ],
)
def test_chaos_refuses_a_broker_it_cannot_run_without_the_password(target: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says) as caught:
        system_of(target)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--database", "sqlite:///demo.db"], "needs PostgreSQL"),
        (["--broker", "nats://127.0.0.1:4222"], "nats"),
    ],
)
def test_demo_crash_refuses_what_it_cannot_run_in_one_line(args: list[str], says: str) -> None:
    result = CliRunner().invoke(app, ["demo", "--crash", *args])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ")
    assert says in line


def test_chaos_does_not_offer_the_demos_crash_schedule() -> None:
    result = CliRunner().invoke(app, ["chaos", "--schedule", "crash"])
    assert result.exit_code == 2
    assert "unknown schedule 'crash'" in result.output
