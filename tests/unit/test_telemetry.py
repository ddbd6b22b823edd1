"""Trace context travels in message headers, and is a no-op without OpenTelemetry; relay and
staging are counted."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import REGISTRY
from sqlalchemy import MetaData, create_engine
from sqlalchemy.orm import Session

import txmq
from txmq import tracing
from txmq.adapters.base import PublishOutcome
from txmq.adapters.memory.adapter import InMemoryBroker
from txmq.errors import PublishError
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
    sent_before = sample("txmq_relay_published_total", system="memory", group="counted")
    with Session(engine) as session, session.begin():
        producer.stage(session, txmq.Message("t", b"a"), txmq.Message("t", b"b"))
    producer.relay().drain()
    assert sample("txmq_outbox_staged_total", group="counted", mode="outbox") == staged_before + 2
    assert sample("txmq_relay_published_total", system="memory", group="counted") == sent_before + 2
    engine.dispose()


def test_consumer_counts_are_exported() -> None:
    from txmq.consumer.stats import ConsumerStats

    name, labels = "txmq_consumed_total", {"group": "exported", "outcome": "processed"}
    before = REGISTRY.get_sample_value(name, labels) or 0.0
    stats = ConsumerStats(group="exported")
    stats.add("processed", 2)
    assert stats.snapshot().processed == 2
    assert REGISTRY.get_sample_value(name, labels) == before + 2


def test_only_settled_deliveries_count_as_consumed() -> None:
    """``txmq_consumed_total`` sums to the deliveries settled: compensations, held retries
    and batch fallbacks are events of their own, not outcomes."""
    from txmq.consumer.stats import ConsumerStats
    from txmq.telemetry import CONSUMED_OUTCOMES, CONSUMER_EVENTS_NAMES

    stats = ConsumerStats(group="events")
    for name in CONSUMED_OUTCOMES + CONSUMER_EVENTS_NAMES:
        stats.add(name)
    for name in CONSUMED_OUTCOMES:
        assert (
            REGISTRY.get_sample_value("txmq_consumed_total", {"group": "events", "outcome": name})
            == 1
        )
    for name in CONSUMER_EVENTS_NAMES:
        assert (
            REGISTRY.get_sample_value("txmq_consumed_total", {"group": "events", "outcome": name})
            is None
        )
        assert (
            REGISTRY.get_sample_value(
                "txmq_consumer_events_total", {"group": "events", "event": name}
            )
            == 1
        )
    counted = {f for f in type(stats.snapshot()).__dataclass_fields__}
    assert counted == set(CONSUMED_OUTCOMES + CONSUMER_EVENTS_NAMES)


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """What txmq traces during the test, on a private SDK provider."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "_OTEL", (propagate, trace, provider.get_tracer("txmq")))
    return memory


def test_a_publish_span_links_each_message_and_shows_what_was_not_confirmed(
    exporter: InMemorySpanExporter,
) -> None:
    with creating("stage", group="g", system="memory") as traced:
        messages = [traced(txmq.Message("t", b"%d" % i)) for i in range(3)]
    with publishing(messages, system="memory") as settled:
        settled(
            [
                PublishOutcome(messages[0].id),
                PublishOutcome(messages[1].id, PublishError("nack")),
                PublishOutcome(messages[2].id),
            ]
        )
    created = [span for span in exporter.get_finished_spans() if span.name == "stage t"]
    (published,) = [span for span in exporter.get_finished_spans() if span.name == "publish t"]
    assert {link.context.span_id for link in published.links} == {
        span.context.span_id for span in created if span.context is not None
    }
    assert len(created) == 3
    assert published.status.status_code is trace.StatusCode.ERROR
    assert published.attributes is not None
    assert published.attributes["txmq.unconfirmed_count"] == 1
    assert published.attributes["messaging.batch.message_count"] == 3


def test_a_failed_span_records_the_error_without_secrets(exporter: InMemorySpanExporter) -> None:
    def stage_unreachable() -> None:
        with creating("stage", group="g", system=None) as traced:
            traced(txmq.Message("t", b"x"))
            raise txmq.ConfigurationError("cannot reach postgresql://app:hunter2@db/orders")

    with pytest.raises(txmq.ConfigurationError):
        stage_unreachable()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is trace.StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "txmq.errors.ConfigurationError"
    assert "messaging.system" not in span.attributes
    (event,) = span.events
    assert event.name == "exception"
    recorded = " ".join(str(value) for value in (event.attributes or {}).values())
    assert "postgresql://app:***@db/orders" in recorded
    assert "hunter2" not in recorded + str(span.status.description)


def test_a_publish_span_links_no_more_than_the_link_limit(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "2")
    with creating("stage", group="g", system="memory") as traced:
        messages = [traced(txmq.Message("t", b"%d" % i)) for i in range(3)]
    untraced = txmq.Message("t", b"no context", headers={"traceparent": "00-garbage"})
    with publishing([untraced, *messages], system="memory"):
        pass
    (published,) = [span for span in exporter.get_finished_spans() if span.name == "publish t"]
    assert [link.context.span_id for link in published.links] == [
        span.context.span_id
        for span in exporter.get_finished_spans()[:2]
        if span.context is not None
    ]
    assert published.attributes is not None
    assert published.attributes["txmq.unlinked_count"] == 1
    assert published.attributes["messaging.batch.message_count"] == 4


def test_with_no_sdk_a_message_without_trace_context_gets_no_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracer = trace.ProxyTracer("txmq")
    monkeypatch.setattr(tracing, "_OTEL", (propagate, trace, tracer))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)  # no SDK provider set
    started: list[str] = []
    start = tracer.start_as_current_span

    def counting(name: str, *args: object, **kwargs: object) -> object:
        started.append(name)
        return start(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tracer, "start_as_current_span", counting)
    with message_span("process", txmq.Message("t", b"x"), group="g", system="memory"):
        assert not trace.get_current_span().get_span_context().is_valid
    assert started == []
    assert tracing.untraced(txmq.Message("t", b"x"))
    # A message carrying a context still continues its trace through a non-recording span.
    traceparent = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"
    carried = txmq.Message("t", b"x", headers={"traceparent": traceparent})
    assert not tracing.untraced(carried)
    with message_span("process", carried, group="g", system="memory"):
        assert trace.get_current_span().get_span_context().trace_id == TRACE_ID
    assert started == ["process t"]
    # A provider set later is used at once.
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    assert not tracing.untraced(txmq.Message("t", b"x"))
    with message_span("process", txmq.Message("t", b"x"), group="g", system="memory"):
        pass
    assert [span.name for span in memory.get_finished_spans()] == ["process t"]
