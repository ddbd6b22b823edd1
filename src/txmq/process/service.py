"""Running a txmq process until a signal: start, watch, drain, exit code.

Exit codes:

* ``0`` (:data:`EXIT_OK`): stopped by SIGTERM or SIGINT, after draining in-flight work;
* ``1`` (:data:`EXIT_LOOP_DIED`): a background loop died (a fatal error or an unexpected
  exception); the process exits within a second of it, after stopping the others;
* ``2`` (:data:`EXIT_CONFIGURATION`): a configuration error retrying cannot fix: a bad
  URL, a database or broker refusing the credentials, a missing schema, a missing
  dependency, a consumer that cannot be imported.

Errors are printed as one ``error: ...`` line on stderr, secrets redacted. Outages of the
database or the broker, at start or later, are waited out (readiness reports them).
"""

from __future__ import annotations

import logging
import random
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.exc import ArgumentError

from txmq.config import describe, redact
from txmq.errors import BrokerUnavailable, ConfigurationError
from txmq.process.probes import Check, ProbeServer, Readiness
from txmq.supervision import Health, fatal_error

log = logging.getLogger("txmq.process")

EXIT_OK = 0
EXIT_LOOP_DIED = 1
EXIT_CONFIGURATION = 2

#: How often the process looks at its loops' health.
WATCH_INTERVAL = 0.5
#: Seconds between two rounds of readiness checks (each opens a database connection from
#: the pool and a broker connection): ``/readyz`` answers from the last round.
READINESS_INTERVAL = 2.0
#: Longest wait between attempts to start while the database or broker is down.
START_BACKOFF = 5.0
#: Names of the broker drivers' exceptions for refused credentials (pika; librdkafka's
#: are recognised by their text, see :func:`broker_refusal`).
_AUTH_ERRORS = frozenset(
    {"ProbableAuthenticationError", "AuthenticationError", "ProbableAccessDeniedError"}
)


class Service(Protocol):
    """What :func:`run_service` runs: a worker or a consumer."""

    def start(self) -> None:
        """Check the configuration and start the background loops; raise on failure."""

    def stop(self) -> None:
        """Let the loops finish the work in hand, then stop them and close connections."""

    def health(self) -> Health: ...

    def readiness_checks(self) -> Sequence[tuple[str, Check]]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeOptions:
    """Where and how the probe server listens (``port`` None: no server).

    Attributes:
        host: address to bind.
        port: TCP port, 0 for a free one; None for no server.
        stall_timeout: seconds without a loop heartbeat before ``/healthz`` fails.
    """

    host: str = "127.0.0.1"
    port: int | None = None
    stall_timeout: float = 120.0


class ConfigurationFailure(Exception):
    """Raised inside this module to leave with :data:`EXIT_CONFIGURATION`."""


def broker_refusal(exc: BaseException) -> ConfigurationError | None:
    """A :class:`ConfigurationError` if ``exc`` says the broker refused the credentials."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ in _AUTH_ERRORS or "authentication" in str(seen).lower():
            return ConfigurationError(f"the broker refused the credentials: {describe(exc)}")
        seen = seen.__cause__ or seen.__context__
    return None


def configuration_error(exc: BaseException) -> BaseException | None:
    """``exc`` (or what it means) if retrying cannot fix it, else None."""
    if isinstance(exc, ArgumentError):  # SQLAlchemy cannot parse the database URL
        return exc
    if (fatal := fatal_error(exc)) is not None:
        return fatal
    if isinstance(exc, BrokerUnavailable):
        return broker_refusal(exc)
    return None


def fail(exc: BaseException) -> None:
    """Print ``exc`` as the one ``error:`` line on stderr."""
    lines = redact(str(exc)).strip().splitlines()
    print(f"error: {lines[0] if lines else type(exc).__name__}", file=sys.stderr, flush=True)


def run_service(service: Service, name: str, probes: ProbeOptions) -> int:
    """Run ``service`` until SIGTERM/SIGINT or a dead loop; return the exit code."""
    stopped = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: signal %d, draining and stopping", name, signum)
        stopped.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    server: ProbeServer | None = None
    started = False
    try:
        if probes.port is not None:
            server = ProbeServer(
                host=probes.host,
                port=probes.port,
                health=service.health,
                readiness=Readiness(
                    service.readiness_checks(), interval=READINESS_INTERVAL, process=name
                ),
                stall_timeout=probes.stall_timeout,
            ).start()
            print(f"probes on http://{probes.host}:{server.port}", flush=True)
        started = _start(service, name, stopped)
        if started:
            print(f"{name} started", flush=True)
        while started and not stopped.wait(WATCH_INTERVAL):
            if dead := service.health().dead:
                loop = dead[0]
                cause = describe(loop.fatal) if loop.fatal is not None else "stopped"
                print(f"error: {loop.name} stopped: {cause}", file=sys.stderr, flush=True)
                return EXIT_LOOP_DIED
        return EXIT_OK
    except ConfigurationFailure as exc:
        fail(exc.__cause__ or exc)
        return EXIT_CONFIGURATION
    except ConfigurationError as exc:
        fail(exc)
        return EXIT_CONFIGURATION
    finally:
        if server is not None:  # first: its readiness checks would reconnect what stop closes
            server.stop()
        if started:
            service.stop()


def _start(service: Service, name: str, stopped: threading.Event) -> bool:
    """Start ``service``, waiting out outages; False if a signal came first.

    Raises:
        ConfigurationFailure: from the configuration error that stopped the start.
    """
    failures = 0
    last = ""
    while not stopped.is_set():
        try:
            service.start()
            return True
        except Exception as exc:
            if (fatal := configuration_error(exc)) is not None:
                raise ConfigurationFailure from fatal
            failures += 1
            text = describe(exc)
            if text != last:  # once per kind of error: a long outage logs one line
                log.warning("%s cannot start yet: %s; retrying", name, text)
                last = text
            stopped.wait(min(START_BACKOFF, 0.2 * 2**failures) * random.uniform(0.5, 1.0))
    return False
