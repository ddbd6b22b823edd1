"""Tracing on every adapter (``broker_url``) and PostgreSQL, seen by the OpenTelemetry
SDK's in-memory exporter: one trace per message, from the span that staged it, through the
relay's batch span (linked) to the consumer's spans."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import Engine, MetaData, Table, create_engine
from sqlalchemy.orm import Session

import txmq
from txmq import tracing
from txmq.adapters import Adapter
from txmq.consumer import Compensation, Consumer, RetryPolicy, make_inbox_table
from txmq.message import Message
from txmq.outbox import Producer, make_outbox_tables
from txmq.states import LocalTransactionState
from txmq.testing import wait_for
from txmq.testing.contract.features import Features

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> TracerProvider:
    """An SDK tracer provider that txmq traces with during the test (the process's global
    provider is left alone: with a recording one, every message carries a traceparent)."""
    sdk = TracerProvider()
    monkeypatch.setattr(tracing, "_OTEL", (propagate, trace, sdk.get_tracer("txmq")))
    return sdk


@pytest.fixture
def exporter(provider: TracerProvider) -> InMemorySpanExporter:
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


@dataclass
class Env:
    adapter: Adapter
    engine: Engine
    inboxes: dict[str, Table]
    producer: Producer
    group: str
    topic: str
    exporter: InMemorySpanExporter

    def consumer(self, group: str, **kwargs: object) -> Consumer:
        return Consumer(
            broker=self.adapter,
            engine=self.engine,
            group=group,
            inbox=self.inboxes[group],
            poll_interval=0.2,
            **kwargs,  # type: ignore[arg-type]
        )

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    def one(self, name: str, message_id: str) -> ReadableSpan:
        """The finished span ``name`` of ``message_id`` (waits for it)."""
        found: list[ReadableSpan] = []

        def ended() -> bool:
            found[:] = [
                s
                for s in self.spans(name)
                if (s.attributes or {}).get("messaging.message.id") == message_id
            ]
            return bool(found)

        wait_for(ended, what=f"span {name!r} of {message_id}")
        assert len(found) == 1, found
        return found[0]


@pytest.fixture
def env(broker_url: str, database_url: str, exporter: InMemorySpanExporter) -> Iterator[Env]:
    suffix = uuid.uuid4().hex[:10]
    metadata = MetaData()
    tables = make_outbox_tables(metadata, prefix=f"tr{suffix}_")
    group, topic = f"g{suffix}", f"t{suffix}.evt"
    inboxes = {
        name: make_inbox_table(metadata, name=f"inbox_{name.replace('-', '_')}")
        for name in (group, f"{group}-comp")
    }
    engine = create_engine(database_url, pool_size=10)
    adapter = txmq.connect(broker_url)
    adapter.declare([txmq.Topology(group, topic)])
    metadata.create_all(engine)
    producer = Producer(
        group=f"p{suffix}", engine=engine, broker=adapter, tables=tables, kafka_native=False
    )
    try:
        yield Env(adapter, engine, inboxes, producer, group, topic, exporter)
    finally:
        producer.close()
        adapter.close()
        metadata.drop_all(engine)
        engine.dispose()


def links_to(span: ReadableSpan, context: trace.SpanContext) -> bool:
    return any(link.context.span_id == context.span_id for link in span.links)


def in_trace_of(parent: ReadableSpan, spans: Sequence[ReadableSpan]) -> None:
    """Each of ``spans`` is a child of ``parent``."""
    assert parent.context is not None
    for span in spans:
        assert span.context is not None, span.name
        assert span.parent is not None, span.name
        assert span.context.trace_id == parent.context.trace_id, span.name
        assert span.parent.span_id == parent.context.span_id, span.name


def test_a_message_is_one_trace_from_staging_to_processing(
    env: Env, provider: TracerProvider
) -> None:
    system = env.adapter.system
    consumer = env.consumer(env.group)
    current: dict[str, trace.SpanContext] = {}

    @consumer.handler(env.topic)
    def handle(message: Message, session: Session) -> None:
        current[message.id] = trace.get_current_span().get_span_context()

    staged, half, local = (Message(env.topic, b"%d" % i) for i in range(3))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("checkout") as request:
        with Session(env.engine) as session, session.begin():
            env.producer.stage(session, staged)
        env.producer.send_in_transaction(half, lambda m, a: LocalTransactionState.COMMIT, None)
        env.producer.send_in_local_transaction(local, lambda session: None)
    assert env.producer.relay().drain() == 3
    with consumer:
        consumer.start()
        wait_for(lambda: consumer.stats.processed == 3, what="all three processed")

    for message, operation in (
        (staged, "stage"),
        (half, "send_in_transaction"),
        (local, "send_in_local_transaction"),
    ):
        created = env.one(f"{operation} {env.topic}", message.id)
        assert created.kind is SpanKind.PRODUCER
        assert created.parent is not None
        assert created.parent.span_id == request.get_span_context().span_id
        assert created.attributes is not None
        assert created.attributes["messaging.system"] == system
        assert created.attributes["messaging.operation.type"] == "create"
        assert created.attributes["messaging.operation.name"] == operation
        assert created.attributes["messaging.destination.name"] == env.topic
        assert created.attributes["txmq.producer.group"] == env.producer.group
        assert created.context is not None
        (published,) = [
            s for s in env.spans(f"publish {env.topic}") if links_to(s, created.context)
        ]
        assert published.kind is SpanKind.PRODUCER
        assert published.attributes is not None
        assert published.attributes["messaging.operation.type"] == "send"
        assert published.attributes["messaging.batch.message_count"] >= 1  # type: ignore[operator]
        processed = env.one(f"process {env.topic}", message.id)
        assert processed.kind is SpanKind.CONSUMER
        assert processed.attributes is not None
        assert processed.attributes["messaging.consumer.group.name"] == env.group
        assert processed.attributes["messaging.operation.type"] == "process"
        assert processed.attributes["txmq.attempt"] == 1
        in_trace_of(created, [processed])
        # The handler runs inside the process span.
        assert processed.context is not None
        assert current[message.id].span_id == processed.context.span_id


def test_retry_dead_letter_and_compensation_are_spans_of_the_message_trace(env: Env) -> None:
    system = env.adapter.system
    consumer = env.consumer(env.group, retry=RetryPolicy(delays=(0.2,)), compensate=True)
    refunder = env.consumer(f"{env.group}-comp")

    @consumer.handler(env.topic)
    def failing(message: Message, session: Session) -> None:
        raise RuntimeError("always")

    @refunder.compensation(env.producer.group)
    def refund(compensation: Compensation, session: Session) -> None:
        pass

    message = Message(env.topic, b"doomed")
    with Session(env.engine) as session, session.begin():
        env.producer.stage(session, message)
    env.producer.relay().drain()
    with refunder, consumer:
        refunder.start()
        consumer.start()
        wait_for(lambda: refunder.stats.processed == 1, what="compensation processed")

    created = env.one(f"stage {env.topic}", message.id)
    failed = env.spans(f"process {env.topic}")
    failed = [s for s in failed if (s.attributes or {}).get("messaging.message.id") == message.id]
    assert sorted((s.attributes or {})["txmq.attempt"] for s in failed) == [1, 2]  # type: ignore[type-var]
    for span in failed:
        assert span.status.status_code is trace.StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["error.type"] == "RuntimeError"
    queue = f"{env.group}.{env.topic}"
    retried = env.one(f"retry {queue}.retry.1", message.id)
    dead = env.one(f"dead_letter {queue}.dlq", message.id)
    compensation_topic = f"{env.producer.group}.compensation"
    compensation = env.spans(f"compensate {compensation_topic}")
    assert len(compensation) == 1
    for span in (retried, dead, *compensation):
        assert span.kind is SpanKind.PRODUCER
        assert span.attributes is not None
        assert span.attributes["messaging.system"] == system
        assert span.attributes["messaging.operation.type"] == "send"
        assert span.attributes["messaging.consumer.group.name"] == env.group
        assert span.attributes["txmq.error.type"] == "RuntimeError"
    assert (retried.attributes or {}).get("txmq.attempt") == 1
    assert (dead.attributes or {}).get("txmq.attempt") == 2
    refunded = env.spans(f"process {compensation_topic}")
    assert len(refunded) == 1
    in_trace_of(created, [*failed, retried, dead, *compensation, *refunded])


def test_a_half_message_sent_in_a_kafka_transaction_has_its_publish_span(
    env: Env, txmq_features: Features
) -> None:
    """With ``kafka_native`` (Kafka only: RabbitMQ relays it), the message is produced in the
    Kafka transaction, not by the relay; its publish span links to it all the same."""
    native = Producer(
        group=env.producer.group,
        engine=env.engine,
        broker=env.adapter,
        tables=env.producer.tables,
        kafka_native=True,
    )
    half = Message(env.topic, b"native")
    try:
        native.send_in_transaction(half, lambda m, a: LocalTransactionState.COMMIT, None)
        relayed = native.relay().drain()
    finally:
        native.close()
    assert relayed == (0 if txmq_features.native_transactions else 1)
    created = env.one(f"send_in_transaction {env.topic}", half.id)
    assert created.context is not None
    published = [s for s in env.spans(f"publish {env.topic}") if links_to(s, created.context)]
    assert len(published) == 1
