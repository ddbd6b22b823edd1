"""Retry delays kept by due time: a subscription withholds a retry until it is due.

On a broker whose retry queues cannot delay a message themselves (Kafka's retry topics:
``Capabilities.retry_delays == "due_time"``), a retry copy is readable at once and carries
its due time in ``x-txmq-due-at``. :class:`DueTimeGate` is what a subscription of such a
broker puts between what it reads and what its :meth:`~Subscription.poll` returns: a retry
that is not due yet is given back (released) and its source paused until then, so nobody
sleeps and the other sources go on. Later messages of a paused source are given back too:
each retry source is one stage, one delay, so they are due later still.

Only the group's retry sources are gated (see :func:`~txmq.adapters.names.is_retry_queue`);
a work queue or topic is handed out as it comes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from txmq.adapters.base import Subscription
from txmq.adapters.names import is_retry_queue
from txmq.wire import HEADER_DUE_AT, Delivery, parse_timestamp

#: The shortest wait a gated poll is given, so that a source due right now is not polled
#: in a busy loop.
_MIN_WAIT = 0.01


class DueTimeGate:
    """Withholds the not-yet-due retries of one subscription of ``group`` over ``sources``.

    A subscription calls :meth:`open` before it fetches (to resume what is due and learn
    how long it may wait) and :meth:`admit` on what it fetched. Not thread-safe: one per
    subscription, used by its thread.

    Args:
        group: the consumer group whose retry stages are gated.
        sources: what the subscription reads; its retry stages are gated, the rest not.
        clock: epoch seconds, the clock of ``x-txmq-due-at`` (``time.time``).
    """

    def __init__(
        self,
        group: str,
        sources: Iterable[str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._gated = frozenset(s for s in sources if is_retry_queue(group, s))
        self._clock = clock
        self._paused: dict[str, float] = {}  # source -> epoch seconds it is due
        self._held = 0

    @property
    def gated(self) -> frozenset[str]:
        """The sources whose deliveries wait for their due time."""
        return self._gated

    def open(self, subscription: Subscription, timeout: float) -> float:
        """Resume the paused sources that are due; return how long the next fetch may
        wait: ``timeout``, shortened to when the next paused source is due."""
        now = self._clock()
        due = [source for source, at in self._paused.items() if at <= now]
        if due:
            subscription.resume(due)
            for source in due:
                del self._paused[source]
        if not self._paused:
            return timeout
        return max(_MIN_WAIT, min(timeout, min(self._paused.values()) - now))

    def admit(self, subscription: Subscription, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """The deliveries to hand out; the rest are released, their sources paused until due.

        A delivery of a gated source is withheld when its ``x-txmq-due-at`` lies ahead, or
        when its source is paused already (it came in the same fetch as one that was not
        due).
        """
        if not self._gated:
            return list(deliveries)
        now = self._clock()
        admitted: list[Delivery] = []
        withheld: list[Delivery] = []
        for delivery in deliveries:
            (withheld if self._withholds(subscription, delivery, now) else admitted).append(
                delivery
            )
        if withheld:
            self._held += len(withheld)
            subscription.release(withheld)
        return admitted

    def take_held(self) -> int:
        """How many deliveries were withheld since the last call."""
        held, self._held = self._held, 0
        return held

    def _withholds(self, subscription: Subscription, delivery: Delivery, now: float) -> bool:
        source = delivery.source
        if source not in self._gated:
            return False
        if source in self._paused:
            return True
        headers = delivery.message.headers if delivery.message else delivery.raw_headers
        due = parse_timestamp(headers.get(HEADER_DUE_AT))
        if due is None or due <= now:
            return False
        self._paused[source] = due
        subscription.pause([source])
        return True
