"""The bridge between the event loop and txmq's blocking parts.

Two directions:

* ``await Threads.run(fn, ...)``: a blocking call (the synchronous outbox store, a relay,
  an operator's query) in a bounded pool of threads, with the caller's context variables
  (tracing) carried over.
* Inside a greenlet started by :func:`sqlalchemy.util.greenlet_spawn` (where txmq's
  synchronous consumer code runs on the event loop, its SQL going through the asyncio
  driver), :func:`blocking` hands a blocking broker call to the pool and suspends the
  greenlet until it returns; the event loop keeps running meanwhile.

pika and confluent-kafka stay the drivers: their calls that may wait for the network run in
the pool, never on the loop; the acks of a subscription that
:attr:`~txmq.adapters.base.Subscription.settles_at_once` are made on the loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from sqlalchemy.util import await_only

from txmq.adapters.base import Publisher, PublishOutcome, Subscription, Withheld
from txmq.message import Message
from txmq.wire import Delivery

P = ParamSpec("P")
T = TypeVar("T")


class Threads:
    """A bounded pool of threads for blocking calls made from the event loop.

    Args:
        name: prefix of the threads' names.
        size: most calls running at once; later ones wait for a free thread.
    """

    def __init__(self, *, name: str, size: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in a thread of the pool, awaited without blocking the loop."""
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def blocking(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in a thread of the pool, from synchronous code running in
        a greenlet of ``greenlet_spawn`` on the event loop (the greenlet waits, the loop
        does not)."""
        return await_only(self.run(fn, *args, **kwargs))

    def close(self) -> None:
        """Let running calls finish; start no new ones."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class BridgedSubscription(Subscription):
    """A subscription whose calls run in the bridge's threads (see :func:`blocking`), but
    for the acks and counts of one that :attr:`~Subscription.settles_at_once`."""

    def __init__(self, inner: Subscription, threads: Threads) -> None:
        self._inner = inner
        self._threads = threads

    def poll(self, timeout: float, max_messages: int = 100) -> list[Delivery]:
        return self._threads.blocking(self._inner.poll, timeout, max_messages)

    def ack(self, deliveries: Iterable[Delivery]) -> None:
        if self._inner.settles_at_once:  # a thread hop would cost more than the ack
            self._inner.ack(deliveries)
        else:
            self._threads.blocking(self._inner.ack, list(deliveries))

    def release(self, deliveries: Iterable[Delivery]) -> None:
        self._threads.blocking(self._inner.release, list(deliveries))

    def close(self) -> None:
        self._threads.blocking(self._inner.close)

    def pause(self, sources: Iterable[str]) -> None:
        self._threads.blocking(self._inner.pause, list(sources))

    def resume(self, sources: Iterable[str]) -> None:
        self._threads.blocking(self._inner.resume, list(sources))

    def withheld(self) -> Withheld:
        if self._inner.settles_at_once:
            return self._inner.withheld()
        return self._threads.blocking(self._inner.withheld)


class BridgedPublisher(Publisher):
    """A publisher whose every call runs in the bridge's threads (see :func:`blocking`)."""

    def __init__(self, inner: Publisher, threads: Threads) -> None:
        self._inner = inner
        self._threads = threads

    def publish(
        self, messages: Sequence[Message], *, timeout: float | None = None
    ) -> list[PublishOutcome]:
        return self._threads.blocking(self._inner.publish, messages, timeout=timeout)

    def send_to_queue(
        self, queue: str, messages: Sequence[Message], *, timeout: float | None = None
    ) -> list[PublishOutcome]:
        return self._threads.blocking(self._inner.send_to_queue, queue, messages, timeout=timeout)

    def connect(self) -> None:
        self._threads.blocking(self._inner.connect)

    def close(self) -> None:
        self._threads.blocking(self._inner.close)
