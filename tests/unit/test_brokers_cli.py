"""``txmq brokers status --json``: one object per recorded broker, passwords hidden."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from txmq.cli.root import app
from txmq.testing.provision import lifecycle
from txmq.testing.provision.state import Running


def test_status_json_lists_each_broker_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rabbitmq = Running(
        broker="rabbitmq",
        mode="container",
        url="rabbitmq://guest:s3cret@127.0.0.1:21672/",
        container_id="abc123",
        image="rabbitmq:3.13",
    )
    postgres = Running(broker="postgres", mode="process", url="postgresql://pg@x/db", pgids=(42,))
    monkeypatch.setattr(lifecycle, "status", lambda: [(rabbitmq, True), (postgres, False)])
    result = CliRunner().invoke(app, ["brokers", "status", "--json"])
    assert result.exit_code == 1  # one recorded broker does not run
    assert "s3cret" not in result.output
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["broker"] == "rabbitmq"
    assert first["running"] is True
    assert first["container_id"] == "abc123"
    assert first["url"] == "rabbitmq://guest:***@127.0.0.1:21672/"
    assert second == {
        "broker": "postgres",
        "running": False,
        "mode": "process",
        "url": "postgresql://pg@x/db",
        "container_id": None,
        "image": None,
        "pgids": [42],
        "run_dir": None,
    }


def test_status_json_with_nothing_recorded_says_so_on_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lifecycle, "status", list)
    result = CliRunner().invoke(app, ["brokers", "status", "--json"])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "no brokers started by 'txmq brokers up'\n"
