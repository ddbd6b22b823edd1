"""Trace context travels in message headers, and is a no-op without OpenTelemetry; relay and
staging are counted."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry import context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import REGISTRY
from sqlalchemy import MetaData, create_engine
from sqlalchemy.orm import Session

import txmq
from txmq import tracing
from txmq.testing.fakes import InMemoryBroker
from txmq.tracing import creating, message_span, publishing

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0x00F067AA0BA902B7


def active_span() -> object:
    span = NonRecordingSpan(
        SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(1))
    )
    return context.attach(trace.set_span_in_context(span))


def test_without_opentelemetry_nothing_is_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_OTEL", None)  # what the import cache holds without it
    message = txmq.Message("t", b"x")
    token = active_span()
    try:
        with creating("stage", group="g", system="memory") as traced:
            assert traced(message) is message
        with (
            publishing([message], system="memory"),
            message_span("process", message, group="g", system="memory"),
        ):
            pass
    finally:
        context.detach(token)  # type: ignore[arg-type]


def test_traceparent_is_injected_and_continued_by_the_consumer_span() -> None:
    token = active_span()
    try:
        with creating("stage", group="g", system="memory") as traced:
            message = traced(txmq.Message("t", b"x"))
    finally:
        context.detach(token)  # type: ignore[arg-type]
    assert message.headers["traceparent"].startswith(f"00-{TRACE_ID:032x}-")
    with message_span("process", message, group="g", system="rabbitmq"):
        current = trace.get_current_span().get_span_context()
        assert current.trace_id == TRACE_ID


def test_staging_and_relaying_are_counted(tmp_path: Path) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    engine = create_engine(f"sqlite:///{tmp_path / 'o.db'}")
    metadata = MetaData()
    txmq.create_schema(engine, txmq.make_outbox_tables(metadata))
    broker = InMemoryBroker()
    broker.declare([txmq.Topology("g", "t")])
    producer = txmq.Producer(
        group="counted", engine=engine, broker=broker, tables=txmq.make_outbox_tables(metadata)
    )
    staged_before = sample("txmq_outbox_staged_total", group="counted", mode="outbox")
    sent_before = sample("txmq_relay_published_total", system="memory")
    with Session(engine) as session, session.begin():
        producer.stage(session, txmq.Message("t", b"a"), txmq.Message("t", b"b"))
    producer.relay().drain()
    assert sample("txmq_outbox_staged_total", group="counted", mode="outbox") == staged_before + 2
    assert sample("txmq_relay_published_total", system="memory") == sent_before + 2
    engine.dispose()


def test_consumer_counts_are_exported() -> None:
    from txmq.consumer.stats import ConsumerStats

    name, labels = "txmq_consumed_total", {"group": "exported", "outcome": "processed"}
    before = REGISTRY.get_sample_value(name, labels) or 0.0
    stats = ConsumerStats(group="exported")
    stats.add("processed", 2)
    assert stats.snapshot().processed == 2
    assert REGISTRY.get_sample_value(name, labels) == before + 2
