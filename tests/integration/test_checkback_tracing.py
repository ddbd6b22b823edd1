"""A check-back is a span of its half message's trace, on SQLite (no broker involved: the
check-back reads the outbox and asks the checker)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import Engine, MetaData

from txmq import tracing
from txmq.message import Message
from txmq.outbox import CheckBackPolicy, Producer, make_outbox_tables
from txmq.states import LocalTransactionState, RecordState
from txmq.testing import wait_for


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    sdk = TracerProvider()
    memory = InMemorySpanExporter()
    sdk.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "_OTEL", (propagate, trace, sdk.get_tracer("txmq")))
    return memory


@pytest.mark.parametrize(
    ("answer", "state"),
    [
        (LocalTransactionState.COMMIT, RecordState.READY),
        (LocalTransactionState.ROLLBACK, RecordState.ROLLED_BACK),
    ],
)
def test_a_check_back_is_a_span_of_the_half_message_trace(
    txmq_sqlite_engine: Engine,
    exporter: InMemorySpanExporter,
    answer: LocalTransactionState,
    state: RecordState,
) -> None:
    metadata = MetaData()
    tables = make_outbox_tables(metadata)
    metadata.create_all(txmq_sqlite_engine)
    producer = Producer(
        group="checks",
        engine=txmq_sqlite_engine,
        tables=tables,
        checker=lambda message, count: answer,
        check_policy=CheckBackPolicy(immunity=timedelta(0)),
    )
    half = Message("orders.created", b"{}")
    try:
        producer.send_in_transaction(half, lambda m, a: LocalTransactionState.UNKNOWN, None)
        wait_for(lambda: producer.checkback.run_once() > 0, what="the check-back")
        assert producer.store.get(half.id).state is state
    finally:
        producer.close()

    spans = {span.name: span for span in exporter.get_finished_spans()}
    sent, checked = spans["send_in_transaction orders.created"], spans["check orders.created"]
    assert checked.kind is SpanKind.INTERNAL
    assert checked.attributes is not None
    assert checked.attributes["txmq.check.result"] == answer.value
    assert checked.attributes["txmq.check.count"] == 1
    assert checked.attributes["messaging.message.id"] == half.id
    assert sent.context is not None
    assert checked.context is not None
    assert checked.context.trace_id == sent.context.trace_id
    assert checked.parent is not None
    assert checked.parent.span_id == sent.context.span_id
