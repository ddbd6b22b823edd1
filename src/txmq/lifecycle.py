"""Things to close: the one base class of publishers, subscriptions, producers and DLQ views."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class Closing(abc.ABC):
    """Something to :meth:`close` when done; ``with`` closes it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what it holds. Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
