"""The command line's progress bars: drawn on a terminal's stderr, nowhere else."""

from __future__ import annotations

import io

import pytest

from txmq.cli.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_bar_with_its_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with progress("replaying g.t.dlq") as advance:
        advance(3, 7)
    drawn = terminal.getvalue()
    assert "replaying g.t.dlq" in drawn
    assert "3/7" in drawn


def test_a_redirected_stderr_gets_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with progress("purging") as advance:
        advance(1, 2)
    assert capsys.readouterr() == ("", "")
