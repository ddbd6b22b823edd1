"""/healthz, /readyz and /metrics of the probe server, on real loops and HTTP."""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY

from txmq.errors import MissingDependency
from txmq.process.probes import ProbeServer, Readiness, liveness
from txmq.supervision import Health, SupervisedLoop, health_of
from txmq.testing import wait_for

pytest.importorskip("prometheus_client")


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Boom(BaseException):
    """Not an Exception: the loop that meets it dies."""


def test_healthz_fails_with_the_name_of_the_loop_that_died() -> None:
    stop = threading.Event()
    die = threading.Event()

    def step() -> bool:
        if die.is_set():
            raise Boom("handler crashed")
        return False

    loops = [
        SupervisedLoop(name=f"txmq-test-{n}", step=step, stop=stop, idle=lambda: stop.wait(0.05))
        for n in range(2)
    ]
    for loop in loops:
        loop.start()
    server = ProbeServer(
        host="127.0.0.1",
        port=0,
        health=lambda: health_of(loops),
        readiness=Readiness([("database", lambda: None)], interval=0.1),
        stall_timeout=60.0,
    ).start()
    try:
        assert get(server.port, "/healthz")[0] == 200
        die.set()
        wait_for(lambda: get(server.port, "/healthz")[0] == 503)
        body = json.loads(get(server.port, "/healthz")[1])
        assert body["status"] == "dead"
        assert body["loop"].startswith("txmq-test-")
        assert "Boom: handler crashed" in body["reason"]
    finally:
        stop.set()
        server.stop()


def test_healthz_fails_when_a_loop_makes_no_heartbeat_for_the_stall_timeout() -> None:
    stop, stuck = threading.Event(), threading.Event()

    def step() -> bool:
        stuck.wait(30)  # a step that hangs: no heartbeat until it returns
        return False

    loop = SupervisedLoop(name="txmq-stuck", step=step, stop=stop).start()
    try:
        wait_for(lambda: liveness(health_of([loop]), stall_timeout=0.3).ok is False)
        verdict = liveness(health_of([loop]), stall_timeout=0.3)
        assert verdict.body["status"] == "stalled"
        assert verdict.body["loop"] == "txmq-stuck"
        assert liveness(health_of([loop]), stall_timeout=600).ok
    finally:
        stop.set()
        stuck.set()
        loop.join(5)


def test_readyz_names_the_failing_check_and_recovers_by_itself() -> None:
    down = threading.Event()

    def database() -> None:
        if down.is_set():
            raise ConnectionError("connection refused")

    server = ProbeServer(
        host="127.0.0.1",
        port=0,
        health=Health,
        readiness=Readiness(
            [("database", database), ("broker", lambda: None)], interval=0.05, process="probed"
        ),
        stall_timeout=60.0,
    ).start()

    def ready_gauge() -> float | None:
        return REGISTRY.get_sample_value("txmq_ready", {"process": "probed"})

    try:
        wait_for(lambda: get(server.port, "/readyz")[0] == 200)
        wait_for(lambda: ready_gauge() == 1.0)
        down.set()
        wait_for(lambda: get(server.port, "/readyz")[0] == 503)
        wait_for(lambda: ready_gauge() == 0.0)
        body = json.loads(get(server.port, "/readyz")[1])
        assert body["failing"] == {"database": "ConnectionError: connection refused"}
        down.clear()
        wait_for(lambda: get(server.port, "/readyz")[0] == 200)

        def shown_ready() -> tuple[int, str] | None:
            # A readiness round sets its gauge just after its verdict: /metrics may show
            # the process ready a moment after /readyz does.
            status, text = get(server.port, "/metrics")
            return (status, text) if 'txmq_ready{process="probed"} 1.0' in text else None

        status, _ = wait_for(shown_ready, what="/metrics to show the process ready again")
        assert status == 200
        assert get(server.port, "/nowhere")[0] == 404
    finally:
        server.stop()


def test_probes_without_prometheus_client_are_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    with pytest.raises(MissingDependency, match=r"pip install 'txmq\[prometheus\]'"):
        ProbeServer(
            host="127.0.0.1",
            port=0,
            health=Health,
            readiness=Readiness([]),
            stall_timeout=60.0,
        )
