"""Supervised loops as asyncio tasks: the async flavour of :class:`txmq.supervision.SupervisedLoop`.

Same rules as the threaded loops: a step's error is transient (back off, try again) unless
it is fatal (:func:`~txmq.supervision.fatal_error`: the loop stops, logged once) or not an
:class:`Exception` at all (the loop is dead, logged with its traceback). Task cancellation
ends the loop as stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from txmq.config import describe
from txmq.supervision import (
    Backoff,
    LoopHealth,
    LoopState,
    fatal_error,
)

log = logging.getLogger("txmq.supervision")


class AsyncSupervisedLoop:
    """Runs ``await step()`` in a task until ``stop`` is set, or a fatal error.

    Args:
        name: the loop's and its task's name.
        step: one pass of work; returns True if there may be more right away. It waits for
            work itself (a poll with a timeout).
        stop: set by the owner to end the loop.
        on_error: awaited after a failed step, before backing off (drop a broken connection).
        on_exit: awaited once when the loop ends, however it ends.
        max_backoff: longest wait after a broker error.
    """

    def __init__(
        self,
        *,
        name: str,
        step: Callable[[], Awaitable[bool]],
        stop: asyncio.Event,
        on_error: Callable[[], Awaitable[None]] | None = None,
        on_exit: Callable[[], Awaitable[None]] | None = None,
        max_backoff: float = 15.0,
    ) -> None:
        self.name = name
        self._step = step
        self._stop = stop
        self._on_error = on_error
        self._on_exit = on_exit
        self._backoff = Backoff(name=name, max_backoff=max_backoff)
        self._state = LoopState.STOPPED
        self._heartbeat = time.monotonic()
        self._fatal: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> AsyncSupervisedLoop:
        """Start the loop's task on the running event loop."""
        self._beat(LoopState.RUNNING)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        return self

    async def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the loop to end; True when it has."""
        if self._task is None:
            return True
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        return bool(done)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def health(self) -> LoopHealth:
        return LoopHealth(
            name=self.name,
            alive=self.alive,
            state=self._state,
            seconds_since_heartbeat=time.monotonic() - self._heartbeat,
            last_error=self._backoff.last_error,
            fatal=self._fatal,
        )

    def _beat(self, state: LoopState) -> None:
        self._state = state
        self._heartbeat = time.monotonic()

    async def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._beat(LoopState.RUNNING)
                try:
                    busy = await self._step()
                    self._backoff.succeeded()
                    if not busy:
                        self._beat(LoopState.IDLE)
                except Exception as exc:
                    if (fatal := fatal_error(exc)) is not None:
                        self._die(fatal, traceback=False)
                        return
                    await self._back_off(exc)
        except asyncio.CancelledError:
            pass  # the owner gave up waiting for a graceful stop
        except BaseException as exc:
            self._die(exc, traceback=True)
        finally:
            if self._state is not LoopState.DEAD:
                self._state = LoopState.STOPPED
            if self._on_exit is not None:
                await self._quietly(self._on_exit)

    async def _back_off(self, exc: Exception) -> None:
        delay = self._backoff.failed(exc)
        if self._on_error is not None:
            await self._quietly(self._on_error)
        self._beat(LoopState.BACKING_OFF)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    def _die(self, exc: BaseException, *, traceback: bool) -> None:
        self._state, self._fatal = LoopState.DEAD, exc
        self._heartbeat = time.monotonic()
        if traceback:
            log.critical("%s died: %s", self.name, describe(exc), exc_info=exc)
        else:
            log.error("%s stopped: %s", self.name, describe(exc))

    async def _quietly(self, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except Exception:  # cleaning up after a failure must not hide the failure
            log.debug("%s: cleanup failed", self.name, exc_info=True)
