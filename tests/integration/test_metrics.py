"""Metrics on real PostgreSQL, RabbitMQ and Kafka: sampled gauges, relay and consumer counters.

Values are read back from prometheus-client's default registry, as ``/metrics`` shows them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, MetaData, create_engine, select, text, update
from sqlalchemy.orm import Session

import txmq
from txmq.adapters.names import dead_letter_queue
from txmq.consumer import Consumer, DeadLetters, RetryPolicy, make_inbox_table
from txmq.message import Message
from txmq.metrics import ConsumerLagSampler, DeadLetterSampler, OutboxSampler, oldest_staged
from txmq.outbox import Producer, make_outbox_tables
from txmq.outbox.store import OutboxStore, utcnow
from txmq.sql.tables import OutboxTables
from txmq.states import RecordState
from txmq.testing import wait_for

pytestmark = [pytest.mark.database]


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def tables(engine: Engine) -> Iterator[OutboxTables]:
    metadata = MetaData()
    tables = make_outbox_tables(metadata, prefix=f"m{uuid.uuid4().hex[:8]}_")
    metadata.create_all(engine)
    yield tables
    metadata.drop_all(engine)


def stage(store: OutboxStore, group: str, count: int) -> list[str]:
    messages = [Message("t", b"x") for _ in range(count)]
    with store.engine.begin() as connection:
        store.stage(connection, messages, group)
    return [m.id for m in messages]


def backdate(store: OutboxStore, message_ids: list[str], age: timedelta) -> None:
    records = store.tables.records
    with store.engine.begin() as connection:
        connection.execute(
            update(records).where(records.c.id.in_(message_ids)).values(created_at=utcnow() - age)
        )


def test_outbox_sampler_gauges_reflect_every_state(tables: OutboxTables, engine: Engine) -> None:
    store = OutboxStore(engine, tables)
    group, other = f"g{uuid.uuid4().hex[:8]}", f"o{uuid.uuid4().hex[:8]}"
    ready = stage(store, group, 4)
    stage(store, other, 2)  # another group's records are not counted
    prepared = [Message("t", b"half") for _ in range(3)]
    for message in prepared:
        store.prepare(message, group, immunity=timedelta(minutes=1))
    records = tables.records
    with engine.begin() as connection:
        store.transition(connection, prepared[0].id, RecordState.PARKED)
        seq = connection.execute(select(records.c.seq).where(records.c.id == ready[0])).scalar()
        assert seq is not None
        store.mark_refused(connection, seq, "PublishRefused: too large")
    backdate(store, ready[1:2], timedelta(hours=1))
    backdate(store, [prepared[1].id], timedelta(hours=2))
    sampler = OutboxSampler(store=store, groups=[group, other])

    found = sampler.sample()

    def gauge(state: str, name: str = "txmq_outbox_records", of: str = group) -> float | None:
        return REGISTRY.get_sample_value(name, {"group": of, "state": state})

    assert gauge("READY") == 3
    assert gauge("PREPARED") == 2
    assert gauge("PARKED") == 1
    assert gauge("FAILED") == 1
    assert gauge("SENT") == 0
    assert gauge("ROLLED_BACK") == 0
    assert gauge("READY", of=other) == 2
    assert gauge("PREPARED", of=other) == 0
    ready_age = gauge("READY", "txmq_outbox_oldest_age_seconds")
    prepared_age = gauge("PREPARED", "txmq_outbox_oldest_age_seconds")
    assert ready_age is not None
    assert 3600 <= ready_age < 3600 + 120
    assert prepared_age is not None
    assert 7200 <= prepared_age < 7200 + 120
    assert gauge("PREPARED", "txmq_outbox_oldest_age_seconds", of=other) == 0
    assert found[group].counts[RecordState.READY] == 3

    # Resolved and published, the gauges go back to 0 at the next sample.
    with engine.begin() as connection:
        for message in prepared[1:]:
            store.transition(connection, message.id, RecordState.ROLLED_BACK)
        seqs = connection.execute(
            select(records.c.seq).where(records.c.state == RecordState.READY.value)
        ).scalars()
        store.mark_sent(connection, list(seqs))
    sampler.sample()
    assert gauge("READY") == 0
    assert gauge("PREPARED") == 0
    assert gauge("ROLLED_BACK") == 2
    assert gauge("SENT") == 3
    assert gauge("READY", "txmq_outbox_oldest_age_seconds") == 0
    assert gauge("PREPARED", "txmq_outbox_oldest_age_seconds") == 0


def test_the_oldest_age_queries_scan_no_table(
    tables: OutboxTables, engine: Engine, database_url: str
) -> None:
    """With many finished records, PostgreSQL finds the oldest READY and PREPARED records
    through the partial indexes, not by reading the table."""
    if not database_url.startswith("postgresql"):
        pytest.skip("EXPLAIN of PostgreSQL")
    name, group = tables.records.name, f"g{uuid.uuid4().hex[:8]}"
    with engine.begin() as connection:
        connection.execute(
            text(
                f"INSERT INTO {name} (id, producer_group, topic, body, state, created_at, "
                "updated_at) SELECT 'm' || n, 'g' || (n % 5), 't', '', 'SENT', now(), now() "
                "FROM generate_series(1, 200000) AS n"
            )
        )
    store = OutboxStore(engine, tables)
    stage(store, group, 3)
    store.prepare(Message("t", b"half"), group, immunity=timedelta(minutes=1))
    with engine.begin() as connection:
        connection.execute(text(f"ANALYZE {name}"))
        statement = oldest_staged(tables.records, group, sql=store.sql).compile(
            engine, compile_kwargs={"literal_binds": True}
        )
        plan = "\n".join(connection.execute(text(f"EXPLAIN {statement}")).scalars())
    assert "Seq Scan" not in plan, plan
    assert f"ix_{name}_ready" in plan, plan
    assert f"ix_{name}_prepared" in plan, plan
    started = time.perf_counter()
    found = OutboxSampler(store=store, groups=[group]).sample()
    elapsed = time.perf_counter() - started
    assert found[group].counts[RecordState.READY] == 3
    print(f"sample over 200004 records: {elapsed * 1000:.0f} ms")


def test_outbox_sampler_raises_schema_missing(engine: Engine) -> None:
    tables = make_outbox_tables(MetaData(), prefix=f"absent{uuid.uuid4().hex[:8]}_")
    sampler = OutboxSampler(store=OutboxStore(engine, tables), groups=["g"])
    with pytest.raises(txmq.SchemaMissing):
        sampler.sample()


def test_relay_counts_published_records_and_batches(
    broker_url: str, tables: OutboxTables, engine: Engine
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic = f"t{suffix}.evt"
    broker = txmq.connect(broker_url)
    try:
        broker.declare([txmq.Topology(f"g{suffix}", topic)])
        producer = Producer(group=f"p{suffix}", engine=engine, broker=broker, tables=tables)
        system, group = broker.system, producer.group
        published = value("txmq_relay_published_total", system=system, group=group)
        batches = value("txmq_relay_batch_size_count", system=system, group=group)
        sizes = value("txmq_relay_batch_size_sum", system=system, group=group)
        seconds = value("txmq_relay_batch_duration_seconds_count", system=system, group=group)
        with Session(engine) as session, session.begin():
            producer.stage(session, *(Message(topic, b"x") for _ in range(5)))
        assert producer.relay().drain() == 5
    finally:
        broker.close()
    # Other tests may relay on the same system at the same time: at least ours moved them.
    assert value("txmq_relay_published_total", system=system, group=group) >= published + 5
    assert value("txmq_relay_batch_size_count", system=system, group=group) >= batches + 1
    assert value("txmq_relay_batch_size_sum", system=system, group=group) >= sizes + 5
    assert (
        value("txmq_relay_batch_duration_seconds_count", system=system, group=group) >= seconds + 1
    )


@pytest.fixture
def consumer_env(broker_url: str, engine: Engine) -> Iterator[tuple[txmq.Adapter, MetaData, str]]:
    suffix = uuid.uuid4().hex[:10]
    metadata = MetaData()
    make_inbox_table(metadata, name=f"inbox_{suffix}")
    metadata.create_all(engine)
    broker = txmq.connect(broker_url)
    try:
        yield broker, metadata, suffix
    finally:
        broker.close()
        metadata.drop_all(engine)


def test_consumer_counts_outcomes_and_times_failing_handler_runs(
    consumer_env: tuple[txmq.Adapter, MetaData, str], engine: Engine
) -> None:
    broker, metadata, suffix = consumer_env
    group, topic = f"g{suffix}", f"t{suffix}.evt"
    consumer = Consumer(
        broker=broker,
        engine=engine,
        group=group,
        inbox=metadata.tables[f"inbox_{suffix}"],
        retry=RetryPolicy(delays=(0.2,)),
        poll_interval=0.2,
    )
    calls: list[str] = []
    lock = threading.Lock()

    @consumer.handler(topic)
    def fails_once(message: Message, session: Session) -> None:
        with lock:
            calls.append(message.id)
            if len(calls) == 1:
                raise RuntimeError("first attempt fails")

    with consumer:
        consumer.start()
        with broker.publisher() as publisher:
            assert all(o.ok for o in publisher.publish([Message(topic, b"x")]))
        wait_for(lambda: consumer.stats.processed == 1, what="the second attempt")
    assert value("txmq_consumed_total", group=group, outcome="processed") == 1
    assert value("txmq_consumed_total", group=group, outcome="retried") == 1
    assert value("txmq_consumed_total", group=group, outcome="dead_lettered") == 0
    errors = value("txmq_consume_duration_seconds_count", group=group, result="error")
    assert errors == 1, "the failing run is timed"
    assert value("txmq_consume_duration_seconds_count", group=group, result="ok") == 1


def test_dead_letter_depth_is_sampled(
    consumer_env: tuple[txmq.Adapter, MetaData, str], engine: Engine
) -> None:
    broker, metadata, suffix = consumer_env
    group, topic = f"g{suffix}", f"t{suffix}.evt"
    never = f"n{suffix}.evt"  # a topic whose DLQ was never declared
    consumer = Consumer(
        broker=broker,
        engine=engine,
        group=group,
        inbox=metadata.tables[f"inbox_{suffix}"],
        retry=RetryPolicy(delays=(), non_retryable=(ValueError,)),
        poll_interval=0.2,
    )

    @consumer.handler(topic)
    def poison(message: Message, session: Session) -> None:
        raise ValueError("poison")

    sampler = DeadLetterSampler(broker=broker, queues=[(group, topic), (group, never)])
    with consumer:
        consumer.start()
        assert sampler.sample() == {(group, topic): 0, (group, never): 0}
        with broker.publisher() as publisher:
            outcomes = publisher.publish([Message(topic, str(i).encode()) for i in range(3)])
        assert all(o.ok for o in outcomes)
        wait_for(lambda: consumer.stats.dead_lettered == 3, what="three letters")

    def depth() -> float | None:
        sampler.sample()
        return REGISTRY.get_sample_value("txmq_dlq_depth", {"group": group, "topic": topic})

    wait_for(lambda: depth() == 3, what="a depth of 3")  # RabbitMQ counts a confirmed letter soon
    assert sampler.sample()[group, topic] == 3  # Kafka: the remembered count
    with DeadLetters(broker, group=group, topic=topic) as letters:
        first = letters.list(timeout=10)[0]
        assert letters.replay([first.message.id]).replayed == [first.message.id]
    wait_for(lambda: depth() == 2, what="a depth of 2 after one replay")
    assert REGISTRY.get_sample_value("txmq_dlq_depth", {"group": group, "topic": never}) == 0
    assert broker.queue_depth(dead_letter_queue(group, never)) == 0


def test_consumer_lag_is_sampled(
    consumer_env: tuple[txmq.Adapter, MetaData, str], engine: Engine
) -> None:
    broker, metadata, suffix = consumer_env
    group, topic = f"g{suffix}", f"t{suffix}.evt"
    sampler = ConsumerLagSampler(broker=broker, queues=[(group, topic)])
    assert sampler.sample() == {(group, topic): 0}  # nothing declared yet
    broker.declare([txmq.Topology(group, topic)])
    with broker.publisher() as publisher:
        assert all(o.ok for o in publisher.publish([Message(topic, b"x") for _ in range(4)]))

    def lag() -> float | None:
        sampler.sample()
        return REGISTRY.get_sample_value("txmq_consumer_lag", {"group": group, "topic": topic})

    wait_for(lambda: lag() == 4, what="a lag of 4 before the group consumed anything")
    consumer = Consumer(
        broker=broker,
        engine=engine,
        group=group,
        inbox=metadata.tables[f"inbox_{suffix}"],
        poll_interval=0.2,
    )
    consumer.add_handler(topic, lambda message, session: None)
    with consumer:
        consumer.start()
        wait_for(lambda: consumer.stats.processed == 4, what="four messages processed")
        wait_for(lambda: lag() == 0, what="no lag once they are settled")
