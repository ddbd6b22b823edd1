"""Dead-letter administration for asyncio applications: :class:`txmq.DeadLetters`, awaited.

Every call is the synchronous :class:`~txmq.consumer.dlq.DeadLetters`' own, run in a thread
of a small pool (reading a DLQ waits on the broker for up to ``timeout`` seconds), so what is
listed, replayed and purged is exactly what ``txmq dlq`` and the sync API do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Self

from txmq.adapters import Adapter
from txmq.aio.bridge import Threads
from txmq.consumer.dlq import DeadLetter, DeadLetters, ReplayResult
from txmq.message import validate_name


class AsyncDeadLetters:
    """The DLQ of one consumer group for one topic, for asyncio code.

    Args:
        broker: an adapter (left open) or a broker URL (connected here, in a thread, on
            first use, and closed by :meth:`close`); ``$TXMQ_BROKER_URL`` when ``None``.
        group: the consumer group.
        topic: the logical topic.

    Every method raises what :class:`txmq.DeadLetters`' does:
    :class:`~txmq.errors.QueueNotFound` when the DLQ does not exist, and
    :class:`~txmq.errors.BrokerUnavailable` when the broker cannot be reached.

    Raises:
        InvalidMessage: ``group`` or ``topic`` is not a valid name.

    Example:
        >>> async with AsyncDeadLetters(url, group="cart", topic="t") as dlq:  # doctest: +SKIP
        ...     for letter in await dlq.list():
        ...         print(letter.message.id, letter.error_type)
        ...     await dlq.replay([letter.message.id])
    """

    def __init__(self, broker: Adapter | str | None, *, group: str, topic: str) -> None:
        self.group = validate_name(group, "group")
        self.topic = validate_name(topic, "topic")
        self._broker = broker
        self._threads = Threads(name=f"txmq-aio-dlq-{group}", size=1)
        # An adapter is taken as is (nothing to wait on); a URL is connected in the pool.
        self._sync: DeadLetters | None = (
            DeadLetters(broker, group=group, topic=topic) if isinstance(broker, Adapter) else None
        )
        # Calls that come first together connect once: another connection would never close.
        self._connecting = asyncio.Lock()

    async def _dead_letters(self) -> DeadLetters:
        async with self._connecting:
            if self._sync is None:
                self._sync = await self._threads.run(
                    DeadLetters, self._broker, group=self.group, topic=self.topic
                )
            return self._sync

    async def list(
        self, *, limit: int = 100, timeout: float = 5.0, include_replayed: bool = False
    ) -> list[DeadLetter]:
        """Up to ``limit`` parked messages, oldest first; they stay in the DLQ (see
        :meth:`txmq.DeadLetters.list`)."""
        dlq = await self._dead_letters()
        return await self._threads.run(
            dlq.list, limit=limit, timeout=timeout, include_replayed=include_replayed
        )

    async def show(
        self,
        message_id: str,
        *,
        limit: int = 1000,
        timeout: float = 5.0,
        include_replayed: bool = False,
    ) -> DeadLetter | None:
        """The parked message with id ``message_id`` among the first ``limit``, if any."""
        dlq = await self._dead_letters()
        return await self._threads.run(
            dlq.show, message_id, limit=limit, timeout=timeout, include_replayed=include_replayed
        )

    async def replay(
        self,
        message_ids: Collection[str] | None = None,
        *,
        force: bool = False,
        include_replayed: bool = False,
        limit: int = 1000,
        timeout: float = 30.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> ReplayResult:
        """Send parked messages back to the group and remove them from the DLQ, exactly as
        :meth:`txmq.DeadLetters.replay` (``progress`` is called from txmq's thread).

        Raises:
            PublishError, QueueNotFound, BrokerUnavailable: as :meth:`txmq.DeadLetters.replay`.
        """
        dlq = await self._dead_letters()
        return await self._threads.run(
            dlq.replay,
            message_ids,
            force=force,
            include_replayed=include_replayed,
            limit=limit,
            timeout=timeout,
            progress=progress,
        )

    async def purge(self) -> int:
        """Delete every parked message (replayed ones included); return how many were listed."""
        dlq = await self._dead_letters()
        return await self._threads.run(dlq.purge)

    async def close(self) -> None:
        """Close the broker connection made for a URL (an adapter passed in stays open)."""
        if self._sync is not None:
            await self._threads.run(self._sync.close)
        self._threads.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncDeadLetters(group={self.group!r}, topic={self.topic!r})"


__all__ = ["AsyncDeadLetters"]
