"""Background loops that outlive outages and say how they are doing.

Every thread txmq starts (relay lanes, the check-back loop, consumer workers) runs one
:class:`SupervisedLoop`. The loop calls its step again and again. An error in a step is
treated as transient: the loop backs off (exponentially, with jitter, a few seconds at most
for a database; up to ``max_backoff`` for a broker) and tries again, so it resumes by itself
once the database or broker is back. Two kinds of error end the loop instead, and make its
owner unhealthy:

* fatal ones, which retrying cannot fix: :class:`~txmq.errors.ConfigurationError` and its
  subclasses, including a database that refuses the connection
  (:class:`~txmq.errors.DatabaseRefused`). Logged once, without a traceback.
* anything that is not an :class:`Exception` (a ``BaseException`` escaping the step): the
  loop is dead. Logged once, with the traceback.

Each loop records a heartbeat whenever it starts a step or an idle wait, the last transient
error while it backs off, and what ended it; :class:`Health` is a snapshot of that.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from txmq.config import describe
from txmq.database_errors import refusal
from txmq.errors import BrokerError, ConfigurationError, DatabaseUnavailable

log = logging.getLogger("txmq.supervision")

#: First wait after a failed step, in seconds; it doubles with every further failure.
FIRST_BACKOFF = 0.1
#: Longest wait after a failed step that was not the broker's (the database, mostly), so
#: that a loop resumes within a few seconds of the database being back.
DATABASE_BACKOFF = 2.0


class LoopState(StrEnum):
    """What a supervised loop is doing."""

    RUNNING = "running"  # working on a step
    IDLE = "idle"  # waiting for work
    BACKING_OFF = "backing-off"  # waiting after a transient error, to try again
    STOPPED = "stopped"  # ended by its owner (or never started)
    DEAD = "dead"  # ended by a fatal error or an unexpected BaseException


@dataclass(frozen=True, slots=True)
class LoopHealth:
    """One loop, as last seen.

    Attributes:
        name: the loop's (and its thread's) name, e.g. ``txmq-relay-0``.
        alive: its thread is running.
        state: what it is doing.
        seconds_since_heartbeat: since it last started a step or an idle wait.
        last_error: the transient error it is backing off from (``Type: text``, redacted);
            None once a step succeeded again.
        fatal: the exception that ended it (state DEAD), else None.
    """

    name: str
    alive: bool
    state: LoopState
    seconds_since_heartbeat: float
    last_error: str | None
    fatal: BaseException | None

    @property
    def healthy(self) -> bool:
        """False once the loop is dead: it will not resume by itself."""
        return self.state is not LoopState.DEAD


@dataclass(frozen=True, slots=True)
class Health:
    """The loops of a Producer, Relay or Consumer, as last seen.

    Attributes:
        loops: one entry per background loop (empty before start).
    """

    loops: tuple[LoopHealth, ...] = ()

    @property
    def healthy(self) -> bool:
        """True unless a loop is dead (backing off from an outage is healthy: it resumes)."""
        return all(loop.healthy for loop in self.loops)

    @property
    def dead(self) -> tuple[LoopHealth, ...]:
        """The loops that died, with their exception."""
        return tuple(loop for loop in self.loops if not loop.healthy)

    def __add__(self, other: Health) -> Health:
        return Health(self.loops + other.loops)


def fatal_error(exc: BaseException) -> ConfigurationError | None:
    """The error that makes retrying pointless, if ``exc`` is one (refusals translated)."""
    if isinstance(exc, ConfigurationError):
        return exc
    return refusal(exc)


class Backoff:
    """The back-off policy of a supervised loop (threaded or asyncio): how long to wait
    after each failed step, and one warning per kind of error rather than one per attempt.

    Args:
        name: the loop's name, in the log lines.
        max_backoff: longest wait after a broker error.

    Attributes:
        failures: failed steps since the last one that succeeded.
        last_error: the error being backed off from (``Type: text``, redacted), or None.
    """

    def __init__(self, *, name: str, max_backoff: float) -> None:
        self.name = name
        self.max_backoff = max_backoff
        self.failures = 0
        self.last_error: str | None = None

    def failed(self, exc: Exception) -> float:
        """Count a failed step; return how many seconds to wait before the next one
        (doubling from :data:`FIRST_BACKOFF`, with jitter, capped by the error's kind)."""
        self.failures += 1
        cap = self.max_backoff if isinstance(exc, BrokerError) else DATABASE_BACKOFF
        delay: float = min(cap, FIRST_BACKOFF * 2 ** (self.failures - 1)) * random.uniform(0.5, 1.0)
        text = describe(exc)
        repeated, self.last_error = self.last_error == text, text
        if not repeated:
            # Once per kind of error, not once per attempt: an outage of minutes logs one line.
            known = isinstance(exc, BrokerError | SQLAlchemyError | DatabaseUnavailable)
            log.warning(
                "%s: %s; retrying (backing off up to %.1fs)",
                *(self.name, text, cap),
                exc_info=not known,
            )
        return delay

    def succeeded(self) -> None:
        """A step succeeded: log the resumption once after failures, and start over."""
        if self.failures:
            log.info("%s: resumed after %d failed attempt(s)", self.name, self.failures)
            self.failures, self.last_error = 0, None


class SupervisedLoop:
    """Runs ``step`` in a daemon thread until ``stop`` is set, or a fatal error.

    Args:
        name: the loop's and the thread's name.
        step: one pass of work; returns True if there may be more to do right away, False
            when idle (then ``idle`` runs). Its errors are handled as described above.
        stop: set by the owner to end the loop.
        idle: waits for more work (returns early on stop); None when ``step`` itself waits.
        on_error: called after a failed step before backing off (e.g. to drop a broken
            connection).
        on_exit: called once when the loop ends, however it ends.
        max_backoff: longest wait after a broker error.
    """

    def __init__(
        self,
        *,
        name: str,
        step: Callable[[], bool],
        stop: threading.Event,
        idle: Callable[[], object] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_exit: Callable[[], None] | None = None,
        max_backoff: float = 15.0,
    ) -> None:
        self.name = name
        self._step = step
        self._stop = stop
        self._idle = idle
        self._on_error = on_error
        self._on_exit = on_exit
        self._backoff = Backoff(name=name, max_backoff=max_backoff)
        self._lock = threading.Lock()
        self._state = LoopState.STOPPED
        self._heartbeat = time.monotonic()
        self._fatal: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> SupervisedLoop:
        self._beat(LoopState.RUNNING)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def health(self) -> LoopHealth:
        with self._lock:
            return LoopHealth(
                name=self.name,
                alive=self._thread.is_alive(),
                state=self._state,
                seconds_since_heartbeat=time.monotonic() - self._heartbeat,
                last_error=self._backoff.last_error,
                fatal=self._fatal,
            )

    def _beat(self, state: LoopState) -> None:
        with self._lock:
            self._state = state
            self._heartbeat = time.monotonic()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._beat(LoopState.RUNNING)
                try:
                    busy = self._step()
                    self._backoff.succeeded()
                    if not busy and not self._stop.is_set():
                        self._beat(LoopState.IDLE)
                        if self._idle is not None:
                            self._idle()
                except Exception as exc:
                    if (fatal := fatal_error(exc)) is not None:
                        self._die(fatal, traceback=False)
                        return
                    self._back_off(exc)
        except BaseException as exc:
            self._die(exc, traceback=True)
        finally:
            with self._lock:
                if self._state is not LoopState.DEAD:
                    self._state = LoopState.STOPPED
            if self._on_exit is not None:
                self._call_quietly(self._on_exit)

    def _back_off(self, exc: Exception) -> None:
        delay = self._backoff.failed(exc)
        on_error = self._on_error
        if on_error is not None:
            self._call_quietly(lambda: on_error(exc))
        self._beat(LoopState.BACKING_OFF)
        self._stop.wait(delay)

    def _die(self, exc: BaseException, *, traceback: bool) -> None:
        with self._lock:
            self._state = LoopState.DEAD
            self._fatal = exc
            self._heartbeat = time.monotonic()
        if traceback:
            log.critical("%s died: %s", self.name, describe(exc), exc_info=exc)
        else:
            log.error("%s stopped: %s", self.name, describe(exc))

    def _call_quietly(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:  # cleaning up after a failure must not hide the failure
            log.debug("%s: cleanup failed", self.name, exc_info=True)


class Supervised(Protocol):
    """A supervised loop of either kind: :class:`SupervisedLoop` or
    :class:`txmq.aio.supervision.AsyncSupervisedLoop`."""

    @property
    def alive(self) -> bool: ...

    def health(self) -> LoopHealth: ...


def health_of(loops: Iterable[Supervised]) -> Health:
    """A :class:`Health` snapshot of ``loops``."""
    return Health(tuple(loop.health() for loop in loops))
