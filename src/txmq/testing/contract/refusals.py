"""A message the broker refuses for good is refused at stage() where the limit is known, or
goes FAILED after bounded attempts, visible, resumable and discardable (issue 8, point 6)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Column, Engine, Integer, MetaData, Table, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

import txmq
from txmq.cli.root import app
from txmq.outbox import Producer, Relay, make_outbox_tables
from txmq.outbox.store import utcnow
from txmq.states import RecordState
from txmq.testing.contract.features import requires

pytestmark = [pytest.mark.broker, pytest.mark.database]

FIVE_MB = b"x" * 5_000_000


@pytest.fixture
def prefix() -> str:
    return f"r{uuid.uuid4().hex[:8]}_"


@pytest.fixture
def metadata(engine: Engine, prefix: str) -> Iterator[MetaData]:
    metadata = MetaData()
    Table(f"{prefix}orders", metadata, Column("id", Integer, primary_key=True))
    make_outbox_tables(metadata, prefix=prefix)
    metadata.create_all(engine)
    yield metadata
    metadata.drop_all(engine)


@contextlib.contextmanager
def connected(url: str) -> Iterator[txmq.Adapter]:
    adapter = txmq.connect(url)
    try:
        yield adapter
    finally:
        adapter.close()


@pytest.fixture
def topic(broker_url: str) -> str:
    return f"refusals.{uuid.uuid4().hex[:8]}"


def test_stage_refuses_a_body_larger_than_the_brokers_limit(
    broker_url: str, engine: Engine, metadata: MetaData, prefix: str
) -> None:
    """The broker's limit (Kafka's message.max.bytes, 1 MB here, or the URL's max_body_bytes)
    is learned when the producer is made: a 5 MB message is refused before the business
    transaction commits, whatever the producer's own max_body_bytes."""
    orders = metadata.tables[f"{prefix}orders"]
    with connected(broker_url) as broker:
        producer = Producer(
            group="shop",
            engine=engine,
            broker=broker,
            tables=make_outbox_tables(metadata, prefix=prefix),
            max_body_bytes=6_000_000,
        )
        message = txmq.Message(f"refusals.{uuid.uuid4().hex[:8]}", FIVE_MB)

        def place_order() -> None:
            with Session(engine) as session, session.begin():
                session.execute(orders.insert().values(id=1))
                producer.stage(session, message)

        with pytest.raises(txmq.MessageTooLarge):
            place_order()
        producer.close()
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(orders)).scalar_one() == 0
    assert producer.store.counts() == {}


@requires(protocol="kafka")  # the error is the broker's own (MSG_SIZE_TOO_LARGE)
def test_kafka_reports_the_refused_message_of_a_transaction_as_refused(broker_url: str) -> None:
    """The relay's transactional publisher: the refused message is PublishRefused, the
    others of its aborted transaction are plain failures (tried again at once)."""
    topic = f"refusals.{uuid.uuid4().hex[:8]}"
    sep = "&" if "?" in broker_url else "?"
    with connected(f"{broker_url}{sep}max_body_bytes=6000000") as broker:
        broker.declare([txmq.Topology("g", topic)])
        messages = [txmq.Message(topic, b"a"), txmq.Message(topic, FIVE_MB)]
        with broker.publisher(identity=f"refusals-{uuid.uuid4().hex[:8]}") as publisher:
            small, big = publisher.publish(messages, timeout=20)
    assert isinstance(big.error, txmq.PublishRefused)
    assert "MSG_SIZE_TOO_LARGE" in str(big.error)
    assert small.error is not None
    assert not isinstance(small.error, txmq.PublishRefused)


def test_a_record_the_broker_refuses_goes_failed_and_can_be_retried_or_discarded(
    broker_url: str, engine: Engine, metadata: MetaData, prefix: str, topic: str
) -> None:
    """Staged under a larger limit (a producer without a broker): the relay reports it
    FAILED after its bounded attempts, publishes the rest (its key too), and an operator
    sees it in status and list, and retries or discards it."""
    tables = make_outbox_tables(metadata, prefix=prefix)
    producer = Producer(group="shop", engine=engine, tables=tables, max_body_bytes=6_000_000)
    big = txmq.Message(topic, FIVE_MB, key="k")
    after = txmq.Message(topic, b"after", key="k")
    with Session(engine) as session, session.begin():
        producer.stage(session, big, after)
    with connected(broker_url) as broker:
        broker.declare([txmq.Topology("audit", topic)])
        relay = Relay(
            broker, producer.store, groups=[producer.group], max_refused_attempts=2, concurrency=1
        )
        counted = {"system": broker.system, "group": producer.group}
        failed_before = REGISTRY.get_sample_value("txmq_relay_failed_total", counted) or 0.0
        with pytest.raises(txmq.RecordsFailed) as raised:
            relay.drain(timeout=60)
        assert [message_id for message_id, _ in raised.value.failed] == [big.id]
        assert raised.value.sent == 1
        assert REGISTRY.get_sample_value("txmq_relay_failed_total", counted) == failed_before + 1
        (failed,) = producer.failed()
        assert failed.message.id == big.id
        assert failed.state is RecordState.FAILED
        assert failed.publish_attempts == 2
        assert failed.last_error is not None
        assert "MessageTooLarge" in failed.last_error
        assert producer.store.get(after.id).state is RecordState.SENT

        runner = CliRunner()
        database = ["--database", str(engine.url.render_as_string(hide_password=False))]
        database += ["--prefix", prefix]
        status = runner.invoke(app, ["outbox", "status", *database])
        assert status.exit_code == 0, status.output
        assert any(line.split() == ["FAILED", "1"] for line in status.output.splitlines())
        listed = runner.invoke(app, ["outbox", "list", "--state", "FAILED", *database])
        assert listed.exit_code == 0, listed.output
        assert big.id in listed.output
        assert "MessageTooLarge" in listed.output

        retried = runner.invoke(app, ["outbox", "retry", big.id, *database])
        assert retried.exit_code == 0, retried.output
        record = producer.store.get(big.id)
        assert (record.state, record.publish_attempts) == (RecordState.READY, 0)
        with pytest.raises(txmq.RecordsFailed):
            relay.drain(timeout=60)

        discarded = runner.invoke(app, ["outbox", "discard", big.id, *database])
        assert discarded.exit_code == 0, discarded.output
        with pytest.raises(txmq.RecordNotFound):
            producer.store.get(big.id)
        again = runner.invoke(app, ["outbox", "discard", big.id, *database])
        assert again.exit_code == 1
        relay.stop()


@requires(protocol="kafka")  # the topic is made with confluent-kafka's admin client
def test_a_message_too_large_for_its_kafka_topic_goes_failed_alone(
    broker_url: str, engine: Engine, metadata: MetaData, prefix: str
) -> None:
    """A topic's own max.message.bytes (below the broker's) is not known at stage: Kafka
    refuses the whole produce request of that partition, and the relay finds out which
    record it refused; the others in the same transaction and partition are published."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    topic = f"refusals.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker_url.removeprefix("kafka://")})
    created = admin.create_topics(
        [NewTopic(topic, 1, 1, config={"max.message.bytes": "100000"})], request_timeout=30
    )
    created[topic].result(timeout=30)
    producer = Producer(
        group="shop", engine=engine, tables=make_outbox_tables(metadata, prefix=prefix)
    )
    big = txmq.Message(topic, b"x" * 200_000)
    small = [txmq.Message(topic, f"{n}".encode()) for n in range(5)]
    with Session(engine) as session, session.begin():
        producer.stage(session, small[0], small[1], big, *small[2:])
    with connected(broker_url) as broker:
        relay = Relay(
            broker, producer.store, groups=[producer.group], max_refused_attempts=2, concurrency=1
        )
        with pytest.raises(txmq.RecordsFailed) as raised:
            relay.drain(timeout=90)
        relay.stop()
    assert [message_id for message_id, _ in raised.value.failed] == [big.id]
    assert raised.value.sent == len(small)
    (failed,) = producer.failed()
    assert failed.last_error is not None
    assert "MSG_SIZE_TOO_LARGE" in failed.last_error


@requires(protocol="kafka")  # the topic is made with confluent-kafka's admin client
def test_a_record_behind_a_refused_one_of_its_key_is_not_failed_with_it(
    broker_url: str, engine: Engine, metadata: MetaData, prefix: str
) -> None:
    """Kafka refuses the whole request of a partition for one record too large for its
    topic: a later record of the same key, held back while the refused one is tried
    alone, was never refused itself. It is published once the refused one is FAILED."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    topic = f"refusals.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker_url.removeprefix("kafka://")})
    created = admin.create_topics(
        [NewTopic(topic, 1, 1, config={"max.message.bytes": "100000"})], request_timeout=30
    )
    created[topic].result(timeout=30)
    producer = Producer(
        group="shop", engine=engine, tables=make_outbox_tables(metadata, prefix=prefix)
    )
    before = txmq.Message(topic, b"before", key="k")
    big = txmq.Message(topic, b"x" * 200_000, key="k")
    after = [txmq.Message(topic, f"after {n}".encode(), key="k") for n in range(2)]
    with Session(engine) as session, session.begin():
        producer.stage(session, before, big, *after)
    with connected(broker_url) as broker:
        relay = Relay(
            broker, producer.store, groups=[producer.group], max_refused_attempts=2, concurrency=1
        )
        assert relay.run_once() == 1  # ``before``, published alone; the others are READY
        held = [producer.store.get(message.id).seq for message in (big, *after)]
        # Their second attempt is one claim: the refused record and the two behind it.
        due = max(producer.store.retry_times(held))
        time.sleep(max(0.0, (due - utcnow()).total_seconds()))
        with pytest.raises(txmq.RecordsFailed) as raised:
            relay.run_once()
        assert [message_id for message_id, _ in raised.value.failed] == [big.id]
        assert relay.drain(timeout=90) == len(after)
        relay.stop()
    assert [record.message.id for record in producer.failed()] == [big.id]
    for message in (before, *after):
        assert producer.store.get(message.id).state is RecordState.SENT
