"""Waiting on a condition in a test, instead of sleeping for a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")

#: How long :func:`wait_for` waits by default: generous, since a loaded CI machine is slow
#: and a condition that holds returns at once anyway.
DEFAULT_TIMEOUT = 60.0

_INTERVAL = 0.02


def wait_for(
    condition: Callable[[], _T], timeout: float = DEFAULT_TIMEOUT, what: str = "the condition"
) -> _T:
    """Call ``condition`` every 20 ms until it returns something true, and return that.

    Raises:
        AssertionError: it was still false after ``timeout`` seconds; the message says
            ``what`` was waited for.

    Example:
        >>> wait_for(lambda: consumer.stats.processed == 3, 30, "three processed")  # doctest: +SKIP
        True
    """
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(_INTERVAL)
