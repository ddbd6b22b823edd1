"""The orchestrated order saga on real brokers and PostgreSQL: orders complete, an order
out of stock is refunded and FAILED, a timed-out step is compensated and its late action is
a no-op, and a compensation that keeps failing parks the saga until an operator retries it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from saga_shop import Order, Shop  # next to this file: pytest puts its folder on sys.path
from sqlalchemy import Connection, Engine

import txmq
from txmq import tracing
from txmq.metrics import SagaSampler
from txmq.saga import (
    Orchestrator,
    SagaInstance,
    SagaState,
    abort_saga,
    retry_saga,
)
from txmq.testing import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.database]


@pytest.fixture
def shop(broker_url: str, txmq_engine: Engine, unique: Callable[[str], str]) -> Iterator[Shop]:
    broker = txmq.connect(broker_url)
    shop = Shop(engine=txmq_engine, broker=broker, suffix=unique("x").split("-", 1)[1])
    try:
        yield shop
    finally:
        for close in reversed(shop.closers):
            close()
        broker.close()


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _state(orchestrator: Orchestrator[Order], saga_id: str) -> SagaState:
    return orchestrator.get(saga_id).state


def test_orders_complete_or_fail_with_every_effect_compensated(shop: Shop) -> None:
    shop.participants()
    orchestrator = shop.orchestrator(shop.definition())
    ok = [shop.begin(orchestrator, Order(n, 10 * n)) for n in (1, 2)]
    out_of_stock = shop.begin(orchestrator, Order(3, 30, in_stock=False))
    for saga_id in ok:
        wait_for(lambda s=saga_id: _state(orchestrator, s) is SagaState.COMPLETED, what=saga_id)
    wait_for(lambda: _state(orchestrator, out_of_stock) is SagaState.FAILED, what="a refund")
    assert shop.rows(shop.payments) == {1, 2}
    assert shop.rows(shop.reservations) == {1, 2}
    assert shop.rows(shop.deliveries) == {1, 2}
    assert shop.count(shop.notes, 3) == 1  # refunded once
    failed = orchestrator.get(out_of_stock)
    assert "PRODUCT_OUT_OF_STOCK" in (failed.last_error or "")
    assert [(h["step"], h["event"]) for h in failed.history] == [
        ("payment", "started"),
        ("payment", "succeeded"),
        ("inventory", "failed"),
        ("payment", "compensated"),
    ]
    name = orchestrator.definition.name
    counts = SagaSampler(store=orchestrator.store).sample()[name]
    assert {s: n for s, n in counts.items() if n} == {SagaState.COMPLETED: 2, SagaState.FAILED: 1}
    assert REGISTRY.get_sample_value("txmq_sagas", {"saga": name, "state": "COMPLETED"}) == 2
    assert _metric("txmq_saga_ended_total", saga=name, state="FAILED") == 1
    assert _metric("txmq_saga_compensations_total", saga=name, step="payment", outcome="done") == 1
    assert (
        _metric("txmq_saga_step_duration_seconds_count", saga=name, step="shipping", op="action")
        == 2
    )
    # Every step's timeout (a delayed message) was cancelled by the step's reply.
    assert shop.timeout_states(orchestrator) == {"CANCELLED": 9}
    assert orchestrator.get(ok[0]).results["payment"] == {"charged": 10}
    assert orchestrator.data_of(orchestrator.get(ok[1])) == Order(2, 20)


def test_a_transaction_that_rolled_back_counts_nothing(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop.participants()
    orchestrator = shop.orchestrator(shop.definition())
    name = orchestrator.definition.name
    save = orchestrator.store.save
    failures: list[str] = []

    def save_then_fail_once(connection: Connection, instance: SagaInstance) -> None:
        save(connection, instance)
        if instance.state is SagaState.COMPLETED and not failures:
            failures.append(instance.id)
            raise RuntimeError("the database connection broke just before the commit")

    monkeypatch.setattr(orchestrator.store, "save", save_then_fail_once)
    saga_id = shop.begin(orchestrator, Order(5, 50))
    wait_for(lambda: _state(orchestrator, saga_id) is SagaState.COMPLETED, what="the saga")
    assert failures == [saga_id]  # its last reply was handled twice: rolled back, retried
    wait_for(lambda: orchestrator.consumer.stats.processed >= 3, what="the retried reply")
    assert _metric("txmq_saga_ended_total", saga=name, state="COMPLETED") == 1
    assert (
        _metric("txmq_saga_step_duration_seconds_count", saga=name, step="shipping", op="action")
        == 1
    )


def test_a_timed_out_step_is_compensated_and_its_late_action_is_a_no_op(shop: Shop) -> None:
    shop.participants(late=("inventory",))
    orchestrator = shop.orchestrator(shop.definition(inventory_timeout=1))
    saga_id = shop.begin(orchestrator, Order(7, 70))
    wait_for(lambda: _state(orchestrator, saga_id) is SagaState.FAILED, what="the timeout")
    events = [(h["step"], h["op"], h["event"]) for h in orchestrator.get(saga_id).history]
    assert events[-4:] == [
        ("inventory", "action", "timed out, sent again"),
        ("inventory", "action", "timed out"),
        ("inventory", "compensation", "compensated"),
        ("payment", "compensation", "compensated"),
    ]
    assert shop.rows(shop.payments) == set()
    # The two reserve commands arrive now, after their compensation: both are no-ops.
    (actions,) = shop.late
    actions.start()
    wait_for(lambda: actions.stats.processed >= 2, what="the late actions")
    assert shop.rows(shop.reservations) == set()
    assert _state(orchestrator, saga_id) is SagaState.FAILED


def test_an_operator_aborts_a_running_saga_and_its_done_steps_are_compensated(
    shop: Shop,
) -> None:
    shop.participants(late=("shipping",))
    orchestrator = shop.orchestrator(shop.definition())
    saga_id = shop.begin(orchestrator, Order(11, 110))
    wait_for(lambda: orchestrator.get(saga_id).step_index == 2, what="the saga at shipping")
    abort_saga(shop.engine, shop.sagas, saga_id)
    wait_for(lambda: _state(orchestrator, saga_id) is SagaState.FAILED, what="the abort")
    assert shop.rows(shop.payments) == set()
    assert shop.rows(shop.reservations) == set()
    assert "aborted by an operator" in (orchestrator.get(saga_id).last_error or "")


def test_an_abort_carried_out_by_the_steps_timeout_is_not_carried_out_again(
    shop: Shop,
) -> None:
    """The step's timeout fires before the operator loop comes to the abort: the abort is
    done then, and the operator loop later finds nothing to do (it would send the
    compensation under way again, spending its retry budget)."""
    shop.participants(late=("inventory",))
    orchestrator = shop.orchestrator(shop.definition(inventory_timeout=1), start=False)
    orchestrator.consumer.start()
    saga_id = shop.begin(orchestrator, Order(12, 120))
    # The orchestrator's relay publishes the charge and then stays stopped until the abort
    # is asked for: the inventory step's 1 s timeout cannot fire (and its retry, and the
    # compensation without the abort) before this thread gets there, however loaded.
    assert orchestrator.producer.relay().drain() == 1
    wait_for(lambda: orchestrator.get(saga_id).step_index == 1, what="the saga at inventory")
    shop.refund_broken.set()  # the refund stays unanswered: the saga stays COMPENSATING
    abort_saga(shop.engine, shop.sagas, saga_id)
    orchestrator.producer.start()  # the reserve command, and the timeout once it is due

    def refund_sent() -> bool:
        instance = orchestrator.get(saga_id)
        return instance.step_index == 0 and instance.op == "compensation"

    wait_for(refund_sent, what="the abort, by the inventory step's timeout")
    assert orchestrator.run_operator_requests() == 0
    instance = orchestrator.get(saga_id)
    assert instance.nudged_at is None
    assert instance.attempt == 1
    assert instance.state is SagaState.COMPENSATING


def test_a_compensation_that_keeps_failing_parks_the_saga_until_retried(shop: Shop) -> None:
    shop.participants()
    orchestrator = shop.orchestrator(shop.definition(payment_timeout=1, compensation_retries=1))
    # The payment provider is down when the refund is needed: the refund fails without a
    # reply (dead-lettered), times out, is sent again once, and the saga parks.
    shop.refund_broken.set()
    saga_id = shop.begin(orchestrator, Order(9, 90, in_stock=False))
    wait_for(lambda: _state(orchestrator, saga_id) is SagaState.COMPENSATING, what="compensating")
    wait_for(lambda: _state(orchestrator, saga_id) is SagaState.PARKED, timeout=120, what="parking")
    assert shop.rows(shop.payments) == {9}
    shop.refund_broken.clear()
    retry_saga(shop.engine, shop.sagas, saga_id)
    wait_for(lambda: _state(orchestrator, saga_id) is SagaState.FAILED, what="the retried refund")
    assert shop.rows(shop.payments) == set()
    assert shop.count(shop.notes, 9) == 1


APP = Path(__file__).parent / "saga_orchestrator_app.py"


def test_a_sigkilled_orchestrator_is_resumed_by_another_instance(
    shop: Shop, broker_url: str, txmq_database: str
) -> None:
    """Orchestrator A (another process) runs six sagas up to their last step, whose
    participant is not running yet, and is SIGKILLed as soon as one saga gets there, the
    others anywhere before. Instance B, of the same groups, finishes every one, and every
    effect is applied exactly once."""
    shop.participants(late=("shipping",))
    config = {"broker_url": broker_url, "database_url": txmq_database, "suffix": shop.suffix}
    process = subprocess.Popen(
        [sys.executable, str(APP), json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready", process.stderr
        # B's objects exist (to begin sagas) but do not run: A's relay publishes B's commands.
        second = shop.orchestrator(shop.definition(), start=False)
        saga_ids = [shop.begin(second, Order(n, n)) for n in range(20, 26)]

        def at_shipping() -> bool:
            return any(second.get(s).step_index == 2 for s in saga_ids)

        wait_for(at_shipping, what="a saga at its last step")
    finally:
        process.kill()
        process.wait(30)
    assert process.returncode == -signal.SIGKILL
    shop.start(second)
    (shipping,) = shop.late
    shipping.start()
    for saga_id in saga_ids:
        wait_for(lambda s=saga_id: _state(second, s) is SagaState.COMPLETED, what=saga_id)
    expected = set(range(20, 26))
    assert shop.rows(shop.payments) == expected
    assert shop.rows(shop.reservations) == expected
    assert shop.rows(shop.deliveries) == expected
    for saga_id in saga_ids:
        events = [(h["step"], h["event"]) for h in second.get(saga_id).history]
        assert [e for e in events if e[1] == "succeeded"] == [
            ("payment", "succeeded"),
            ("inventory", "succeeded"),
            ("shipping", "succeeded"),
        ]


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    sdk = TracerProvider()
    memory = InMemorySpanExporter()
    sdk.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "_OTEL", (propagate, trace, sdk.get_tracer("txmq")))
    return memory


def test_a_sagas_steps_are_spans_of_one_trace(shop: Shop, exporter: InMemorySpanExporter) -> None:
    shop.participants()
    orchestrator = shop.orchestrator(shop.definition())
    saga_id = shop.begin(orchestrator, Order(12, 120))
    wait_for(lambda: _state(orchestrator, saga_id) is SagaState.COMPLETED, what="completion")
    spans = exporter.get_finished_spans()
    steps = [s for s in spans if (s.attributes or {}).get("txmq.saga.id") == saga_id]
    assert [s.name for s in steps] == [
        "saga payment action",
        "saga begin " + orchestrator.definition.name,
        "saga inventory action",
        "saga shipping action",
    ]
    (trace_id,) = {s.context.trace_id for s in steps}
    charged = [s for s in spans if s.name == f"process {shop.topics['charge']}"]
    shipped = [s for s in spans if s.name == f"process {shop.topics['ship']}"]
    assert [s.context.trace_id for s in charged + shipped] == [trace_id, trace_id]
