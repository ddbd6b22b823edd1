"""Progress bars of the long ``txmq`` operations, drawn on stderr only when it is a terminal.

A script reading a command's output (``--json`` or not) never sees them: stdout carries no
bar, and a redirected stderr none either.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Called with how much of the work is done, and of how much.
Advance = Callable[[int, int], None]


def _ignore(done: int, total: int) -> None:
    del done, total


@contextmanager
def progress(description: str) -> Iterator[Advance]:
    """A bar for ``description``, pulsing until the work's size is known, removed when done.

    Yields the function to call with the count done so far and the total; it does nothing
    when stderr is not a terminal, so that callers need not ask.
    """
    if not sys.stderr.isatty():
        yield _ignore
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
