"""``txmq --version``: the installed package's version, without running any command."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from txmq.cli.root import app


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"txmq {version('txmq')}\n"


def test_version_wins_over_a_command() -> None:
    result = CliRunner().invoke(app, ["--version", "outbox", "status"])
    assert result.exit_code == 0
    assert result.output.startswith("txmq ")
