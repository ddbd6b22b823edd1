"""``txmq chaos`` refuses what it cannot run in one line, before starting anything."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from txmq.cli.root import app


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--schedule", "nope"], "unknown schedule 'nope'"),
        (["--schedule", "cluster"], "cluster"),
    ],
)
def test_chaos_refuses_a_schedule_it_cannot_run_in_one_line(args: list[str], says: str) -> None:
    result = CliRunner().invoke(app, ["chaos", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert says in lines[0]
