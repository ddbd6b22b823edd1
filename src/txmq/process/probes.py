"""``/metrics``, ``/healthz`` and ``/readyz`` for a supervisor (systemd, Kubernetes).

* ``/healthz`` (liveness) answers 200 while every background loop is alive and has made a
  heartbeat (started a step, an idle wait or a backoff) within ``stall_timeout`` seconds;
  503 with a JSON body naming the loop otherwise. Restart the process when it fails.
* ``/readyz`` (readiness) answers 200 while the last round of checks (database reachable
  and schema present, broker reachable) passed; 503 with the failing checks otherwise.
  The checks run in a background thread every ``interval`` seconds, so a probe never
  waits on a database or broker that hangs; a round that has not finished for too long
  counts as failed.
* ``/metrics``: the Prometheus text format of the default registry.

The server is the standard library's, in a daemon thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from txmq.config import describe
from txmq.errors import ConfigurationError, MissingDependency
from txmq.supervision import Health, LoopState
from txmq.telemetry import READY, register_all

log = logging.getLogger("txmq.probes")

#: A readiness check: returns when ready, raises (any exception) when not.
Check = Callable[[], None]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One probe's answer: ``ok`` and the JSON body."""

    ok: bool
    body: Mapping[str, Any]


def liveness(health: Health, *, stall_timeout: float) -> Verdict:
    """Alive unless a loop died, its thread ended, or it made no heartbeat in ``stall_timeout``."""
    for loop in health.loops:
        if loop.state is LoopState.DEAD or not loop.alive:
            cause = describe(loop.fatal) if loop.fatal is not None else "its thread ended"
            return Verdict(False, {"status": "dead", "loop": loop.name, "reason": cause})
        if loop.seconds_since_heartbeat > stall_timeout:
            reason = f"no heartbeat for {loop.seconds_since_heartbeat:.0f} s ({loop.state.value})"
            return Verdict(False, {"status": "stalled", "loop": loop.name, "reason": reason})
    return Verdict(True, {"status": "alive", "loops": [loop.name for loop in health.loops]})


class Readiness:
    """Runs named checks every ``interval`` seconds in a daemon thread; remembers the result.

    Args:
        checks: ``(name, check)`` pairs, run in order each round.
        interval: seconds between rounds.
        timeout: a round running longer than this counts as failed until it ends.
        process: the ``process`` label of the ``txmq_ready`` gauge each round sets.
    """

    def __init__(
        self,
        checks: Sequence[tuple[str, Check]],
        *,
        interval: float = 1.0,
        timeout: float = 10.0,
        process: str = "txmq",
    ) -> None:
        self._checks = list(checks)
        self._ready_gauge = READY.labels(process)
        self._interval = interval
        self._timeout = timeout
        self._lock = threading.Lock()
        self._failures: dict[str, str] | None = None  # None: no round finished yet
        self._round_started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="txmq-readiness", daemon=True)

    def start(self) -> Readiness:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def verdict(self) -> Verdict:
        with self._lock:
            failures = self._failures
            running_for = time.monotonic() - self._round_started
        if failures is None:
            return Verdict(False, {"status": "starting"})
        if running_for > self._timeout + self._interval:
            return Verdict(
                False, {"status": "not ready", "failing": {"checks": f"hung {running_for:.0f} s"}}
            )
        if failures:
            return Verdict(False, {"status": "not ready", "failing": failures})
        return Verdict(True, {"status": "ready", "checks": [name for name, _ in self._checks]})

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._round_started = time.monotonic()
            failures: dict[str, str] = {}
            for name, check in self._checks:
                try:
                    check()
                except Exception as exc:
                    failures[name] = describe(exc)
            with self._lock:
                changed = self._failures is not None and self._failures.keys() != failures.keys()
                self._failures = failures
                self._round_started = time.monotonic()
            self._ready_gauge.set(0.0 if failures else 1.0)
            if changed:
                if failures:
                    log.warning(
                        "not ready: %s", "; ".join(f"{k}: {v}" for k, v in failures.items())
                    )
                else:
                    log.info("ready again")
            self._stop.wait(self._interval)


def _metrics_exposition() -> Callable[[], tuple[bytes, str]]:
    try:
        import prometheus_client
    except ImportError:
        raise MissingDependency(
            "--metrics-port needs prometheus-client: pip install 'txmq[prometheus]'"
        ) from None
    register_all()

    def render() -> tuple[bytes, str]:
        return prometheus_client.generate_latest(), prometheus_client.CONTENT_TYPE_LATEST

    return render


class ProbeServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` in a daemon thread.

    Args:
        host: address to bind (``127.0.0.1`` keeps it off the network).
        port: TCP port; 0 picks a free one (see :attr:`port`).
        health: the process's loops, as of now.
        readiness: the readiness checks (started and stopped with the server).
        stall_timeout: see :func:`liveness`.

    Raises:
        MissingDependency: prometheus-client is not installed.
        ConfigurationError: the address cannot be bound.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        health: Callable[[], Health],
        readiness: Readiness,
        stall_timeout: float,
    ) -> None:
        render_metrics = _metrics_exposition()
        self.readiness = readiness

        def probe(path: str) -> tuple[int, bytes, str]:
            if path == "/metrics":
                body, content_type = render_metrics()
                return HTTPStatus.OK, body, content_type
            if path == "/healthz":
                verdict = liveness(health(), stall_timeout=stall_timeout)
            elif path == "/readyz":
                verdict = readiness.verdict()
            else:
                return HTTPStatus.NOT_FOUND, b'{"status": "not found"}', "application/json"
            status = HTTPStatus.OK if verdict.ok else HTTPStatus.SERVICE_UNAVAILABLE
            return status, json.dumps(verdict.body).encode(), "application/json"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body, content_type = probe(self.path.partition("?")[0])
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), format % args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve probes on {host}:{port}: {exc}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="txmq-probes", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ProbeServer:
        self.readiness.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.readiness.stop()
        self._server.shutdown()
        self._server.server_close()
