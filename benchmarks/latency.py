"""End-to-end latency: business commit to the handler's start, producer and consumer in two
processes, with txmq's defaults.

The producer process runs business transactions (one row of ``bench_orders`` and one
``stage()``d message) offered open-loop at a fixed rate: transaction ``i`` starts at
``t0 + i / rate`` whatever happened to the ones before (eight threads take the slots, so a
slow commit delays no later transaction), with the producer's own relay
(``producer.start()``). With ``producers`` above one, that producer service runs as that
many processes, each offered its share of the rate and each with its own relay, as a web
service runs several workers: on a 2-core machine one Python process cannot run 1,000
SQLAlchemy business transactions a second even without txmq. The consumer process runs a
``Consumer`` with the default inbox.
Both stamp ``time.monotonic()`` (one clock for every process of the machine): the
producer when the commit returned, the handler when it started. Each round is one phase
at one rate; phases of both rates alternate in the same two processes.
"""

from __future__ import annotations

import itertools
import multiprocessing
import sys
import threading
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, func, insert, select
from sqlalchemy.orm import Session

import txmq
from benchmarks import database
from benchmarks.environment import remove_topologies
from benchmarks.harness import Results, Target, alternate, percentile
from txmq.sql.tables import in_state

#: The issue's targets at 1,000 msg/s, in ms: (p99, p99.9).
TARGETS = {"rabbitmq": (20.0, 100.0), "kafka": (40.0, 100.0)}
PRODUCER_THREADS = 8
REPLY_TIMEOUT = 180.0


def _serve(pipe: Connection, main: Callable[[], None]) -> None:
    """Run a child's ``main``; an exception goes back to the parent instead of dying mute."""
    try:
        main()
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
        raise


def consumer_process(
    broker_url: str,
    database_url: str,
    group: str,
    topic: str,
    pipe: Connection,
    ready: Event,
    options: dict[str, Any],
) -> None:
    """The consumer service (``Consumer`` with ``options`` over the defaults): answers
    ``("begin", phase)``, ``("collect", phase, n)`` (with ``{message id: handler start}``
    and the CPU seconds since the phase began) and ``("stop",)``."""

    def main() -> None:
        engine = create_engine(database_url, pool_size=5)
        handled: dict[str, dict[str, float]] = defaultdict(dict)
        consumer = txmq.Consumer(broker=broker_url, engine=engine, group=group, **options)

        @consumer.handler(topic)
        def handle(message: txmq.Message, session: Session) -> None:
            handled[message.body.decode()][message.id] = time.monotonic()
            ready.set()

        consumer.start()
        cpu: dict[str, float] = {}
        try:
            while True:
                command = pipe.recv()
                if command[0] == "stop":
                    break
                if command[0] == "begin":
                    cpu[command[1]] = time.process_time()
                    continue
                _, phase, expected = command
                deadline = time.monotonic() + REPLY_TIMEOUT
                while len(handled[phase]) < expected and time.monotonic() < deadline:
                    time.sleep(0.01)
                pipe.send(("ok", dict(handled.pop(phase)), time.process_time() - cpu.pop(phase)))
        finally:
            consumer.stop()
            engine.dispose()

    _serve(pipe, main)


def producer_process(
    broker_url: str, database_url: str, group: str, topic: str, pipe: Connection, ready: Event
) -> None:
    """The producer service: warms up until the consumer handled a message (answering how
    many it sent), then answers
    ``("run", phase, rate, seconds)`` with ``{message id: commit returned}``, the CPU
    seconds the phase took and the rate achieved, and ``("stop",)``."""

    def main() -> None:
        engine = create_engine(database_url, pool_size=PRODUCER_THREADS + 6)
        orders, _rows = database.plain_tables(MetaData())
        producer = txmq.Producer(group=group, engine=engine, broker=broker_url).start()

        def business(phase: str) -> tuple[str, float]:
            message = txmq.Message(topic, phase.encode())
            with Session(engine) as session, session.begin():
                session.execute(insert(orders).values(note="order"))
                producer.stage(session, message)
            return message.id, time.monotonic()

        try:
            deadline = time.monotonic() + REPLY_TIMEOUT
            warm_up = 0
            while not ready.is_set():
                if time.monotonic() > deadline:
                    raise TimeoutError("the consumer handled no warm-up message")
                business("warm-up")
                warm_up += 1
                ready.wait(0.05)
            pipe.send(("ok", warm_up))
            while True:
                command = pipe.recv()
                if command[0] == "stop":
                    break
                _, phase, rate, seconds = command
                started = time.process_time()
                commits, achieved = open_loop(partial(business, phase), rate, seconds)
                pipe.send(("ok", commits, time.process_time() - started, achieved))
        finally:
            producer.close()
            engine.dispose()

    _serve(pipe, main)


def open_loop(
    transaction: Callable[[], tuple[str, float]], rate: float, seconds: float
) -> tuple[dict[str, float], float]:
    """Start ``transaction`` ``rate`` times a second for ``seconds``, each at its slot.

    Returns ``{message id: commit time}`` and the rate achieved (transactions over the time
    from the first slot to the last commit).
    """
    total = max(1, round(rate * seconds))
    slots = itertools.count()
    lock = threading.Lock()
    commits: dict[str, float] = {}
    start = time.monotonic() + 0.05

    def worker() -> None:
        while True:
            with lock:
                slot = next(slots)
            if slot >= total:
                return
            delay = start + slot / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            message_id, committed = transaction()
            commits[message_id] = committed

    threads = [threading.Thread(target=worker) for _ in range(PRODUCER_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return commits, total / (max(commits.values()) - start)


def _reply(pipe: Connection, process: multiprocessing.process.BaseProcess) -> tuple[Any, ...]:
    """The child's next answer.

    Raises:
        RuntimeError: the child failed (its traceback), died or did not answer in time.
    """
    deadline = time.monotonic() + REPLY_TIMEOUT
    while not pipe.poll(0.2):
        if not process.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{process.name} died or did not answer (exit {process.exitcode})")
    answer: tuple[Any, ...] = pipe.recv()
    if answer[0] == "error":
        raise RuntimeError(f"{process.name} failed:\n{answer[1]}")
    return answer


class Backlog:
    """Samples, in the parent, where unhandled messages wait while a phase runs: READY in
    the outbox (the relay is behind) or in the broker (the consumer is behind)."""

    def __init__(
        self, adapter: txmq.Adapter, engine: Engine, group: str, consumers: str, topic: str
    ) -> None:
        self._adapter, self._engine = adapter, engine
        records = txmq.make_outbox_tables(MetaData()).records
        # The state written into the SQL, as txmq's own queries do: run every 0.25 s, with
        # the state bound, it may get a generic plan, which counts by scanning the table.
        self._ready = select(func.count()).where(
            records.c.producer_group == group, in_state(records, txmq.RecordState.READY)
        )
        self._consumers, self._topic = consumers, topic
        self._stop = threading.Event()
        self.outbox = self.broker = 0
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._sample, name="backlog sampler")

    def __enter__(self) -> Backlog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            print(f"  backlog sampling failed, figures incomplete: {self.error}", file=sys.stderr)

    def _sample(self) -> None:
        try:
            while not self._stop.wait(0.25):
                with self._engine.connect() as connection:
                    self.outbox = max(self.outbox, connection.execute(self._ready).scalar_one())
                lag = self._adapter.consumer_lag(self._consumers, self._topic) or 0
                self.broker = max(self.broker, lag)
        except Exception as exc:  # a diagnostic: the phase itself goes on
            self.error = exc


def latency_section(
    results: Results,
    broker: str,
    url: str,
    database_url: str,
    rates: tuple[int, ...],
    seconds: float,
    rounds: int,
    consumer_options: dict[str, Any] | None = None,
    producers: int = 1,
) -> None:
    """Measure one broker's end-to-end latency at each rate into ``results``, the consumer
    with ``consumer_options`` over txmq's defaults, the producer service in ``producers``
    processes."""
    suffix = uuid.uuid4().hex[:8]
    group, topic = f"bench-e2e-{suffix}", f"bench.e2e.{suffix}"
    adapter = txmq.connect(url)
    topology = txmq.Topology(f"{group}-c", topic)
    adapter.declare([topology])
    engine = create_engine(database_url, pool_size=1)
    for rate in rates:
        prefix, label = f"latency.{broker}.{rate}", f"{broker} at {rate:,} msg/s"
        p99, p999 = TARGETS[broker] if rate >= 1000 else (None, None)
        for name, bound in (("p50", None), ("p99", p99), ("p99.9", p999)):
            results.figure(
                f"{prefix}.{name}",
                f"latency {name}, {label}",
                "ms",
                better="lower",
                target=Target(bound, "value") if bound else None,
            )
        results.figure(f"{prefix}.achieved", f"rate achieved, {label}", "msg/s")
        for where in ("outbox", "broker"):
            results.figure(
                f"{prefix}.{where}_backlog",
                f"most messages waiting in the {where}, {label}",
                "messages",
                better="lower",
            )
        for role in ("producer", "consumer"):
            results.figure(
                f"cpu.e2e.{broker}.{rate}.{role}",
                f"{role} CPU per 1,000 (all its processes), {label}",
                "s",
                better="lower",
            )

    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    consumer_pipe, consumer_end = context.Pipe()
    args = (url, database_url)
    consumer = context.Process(
        target=consumer_process,
        name="consumer process",
        args=(*args, topology.group, topic, consumer_end, ready, consumer_options or {}),
    )
    producing: list[tuple[Connection, multiprocessing.process.BaseProcess]] = []
    for number in range(producers):
        pipe, end = context.Pipe()
        producing.append(
            (
                pipe,
                context.Process(
                    target=producer_process,
                    name=f"producer process {number}",
                    args=(*args, group, topic, end, ready),
                ),
            )
        )
    every = [*producing, (consumer_pipe, consumer)]
    phases = itertools.count()

    def phase(rate: int) -> dict[str, float]:
        name = f"{rate}-{next(phases)}"
        with Backlog(adapter, engine, group, topology.group, topic) as backlog:
            consumer_pipe.send(("begin", name))
            for pipe, _ in producing:
                pipe.send(("run", name, rate / producers, seconds))
            commits: dict[str, float] = {}
            producer_cpu = achieved = 0.0
            for pipe, process in producing:
                _, some, cpu, rate_reached = _reply(pipe, process)
                commits.update(some)
                producer_cpu += cpu
                achieved += rate_reached
            consumer_pipe.send(("collect", name, len(commits)))
            _, handled, consumer_cpu = _reply(consumer_pipe, consumer)
        missing = len(set(commits) - set(handled))
        if missing:
            raise RuntimeError(f"{missing} of {len(commits)} messages were not handled in time")
        latencies = sorted((handled[i] - commits[i]) * 1000 for i in commits)
        prefix = f"latency.{broker}.{rate}"
        per_1000 = 1000 / len(commits)
        return {
            f"{prefix}.p50": percentile(latencies, 0.50),
            f"{prefix}.p99": percentile(latencies, 0.99),
            f"{prefix}.p99.9": percentile(latencies, 0.999),
            f"{prefix}.achieved": achieved,
            f"{prefix}.outbox_backlog": backlog.outbox,
            f"{prefix}.broker_backlog": backlog.broker,
            f"cpu.e2e.{broker}.{rate}.producer": producer_cpu * per_1000,
            f"cpu.e2e.{broker}.{rate}.consumer": consumer_cpu * per_1000,
        }

    consumer.start()
    for _, process in producing:
        process.start()
    try:
        # Warmed up: the consumer handles messages. Those sent until then are all handled
        # before the first phase, which would otherwise start behind them.
        warm_up = sum(_reply(pipe, process)[1] for pipe, process in producing)
        consumer_pipe.send(("begin", "warm-up"))
        consumer_pipe.send(("collect", "warm-up", warm_up))
        _reply(consumer_pipe, consumer)
        alternate(rounds, {f"{rate} msg/s": partial(phase, rate) for rate in rates}, results)
    finally:
        for pipe, _ in every:
            pipe.send(("stop",))
        for _, process in every:
            process.join(30)
            if process.is_alive():
                process.terminate()
        remove_topologies(broker, url, [topology], suffix)
        adapter.close()
        engine.dispose()
