"""A DLQ replay is a span of each replayed message's trace, on RabbitMQ and Kafka
(``broker_url``) with PostgreSQL: ``replay <destination>``, linked to the context the
message carried since it was staged (named by the topic, like ``publish <topic>``, whether
the copies go to the group's work queue or to the topic)."""

from __future__ import annotations

import uuid

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import MetaData, create_engine
from sqlalchemy.orm import Session

import txmq
from txmq import tracing
from txmq.consumer import Consumer, DeadLetters, Reject, make_inbox_table
from txmq.message import Message
from txmq.outbox import Producer, make_outbox_tables
from txmq.testing import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    sdk = TracerProvider()
    memory = InMemorySpanExporter()
    sdk.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "_OTEL", (propagate, trace, sdk.get_tracer("txmq")))
    return memory


def test_a_replay_is_a_span_linked_to_each_replayed_message(
    broker_url: str, database_url: str, exporter: InMemorySpanExporter
) -> None:
    suffix = uuid.uuid4().hex[:10]
    group, topic = f"g{suffix}", f"t{suffix}.evt"
    metadata = MetaData()
    tables = make_outbox_tables(metadata, prefix=f"rt{suffix}_")
    inbox = make_inbox_table(metadata, name=f"inbox_rt{suffix}")
    engine = create_engine(database_url)
    metadata.create_all(engine)
    adapter = txmq.connect(broker_url)
    producer = Producer(group=f"p{suffix}", engine=engine, broker=adapter, tables=tables)
    try:
        adapter.declare([txmq.Topology(group, topic)])
        consumer = Consumer(
            broker=adapter, engine=engine, group=group, inbox=inbox, poll_interval=0.2
        )

        @consumer.handler(topic)
        def refuse(message: Message, session: Session) -> None:
            raise Reject("not today")

        messages = [Message(topic, b"%d" % n) for n in range(2)]
        with Session(engine) as session, session.begin():
            producer.stage(session, *messages)
        assert producer.relay().drain() == 2
        with consumer:
            consumer.start()
            wait_for(lambda: consumer.stats.dead_lettered == 2, what="both dead-lettered")
        with DeadLetters(adapter, group=group, topic=topic) as letters:
            result = letters.replay(timeout=30)
        assert len(result.replayed) == 2
    finally:
        producer.close()
        adapter.close()
        metadata.drop_all(engine)
        engine.dispose()

    (replayed,) = [s for s in exporter.get_finished_spans() if s.name == f"replay {topic}"]
    assert replayed.kind is SpanKind.PRODUCER
    assert replayed.attributes is not None
    assert replayed.attributes["messaging.operation.name"] == "replay"
    assert replayed.attributes["messaging.batch.message_count"] == 2
    staged = {
        s.context.span_id
        for s in exporter.get_finished_spans()
        if s.name == f"stage {topic}" and s.context is not None
    }
    assert len(staged) == 2
    assert {link.context.span_id for link in replayed.links} == staged
