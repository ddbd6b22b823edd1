"""A topic nobody consumes yet: the same story on both brokers, nothing dropped (issue 8,
point 7). The broker holds the message (Kafka in its topic, RabbitMQ in the deployment's
``<exchange>.unroutable`` queue), the outbox record is SENT, and the first consumer group
started for the topic receives it; an undeliverable compensation is held the same way."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, MetaData
from sqlalchemy.orm import Session

import txmq
from txmq.consumer import Compensation, Consumer, DeadLetters, Reject, make_inbox_table
from txmq.consumer.compensation import compensation_id
from txmq.outbox import Producer, make_outbox_tables
from txmq.states import RecordState
from txmq.testing import wait_for
from txmq.testing.contract.features import Features, requires

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]


def _binds_by_hand_where_held(features: Features) -> bool:
    """The held-messages test binds a queue behind txmq's back with pika where the broker
    holds unroutable messages in a queue (RabbitMQ), and needs nothing where it does not."""
    return features.protocol == "amqp-0-9-1" or not features.unroutable_held_in_a_queue


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def metadata(engine: Engine, suffix: str) -> Iterator[MetaData]:
    metadata = MetaData()
    make_outbox_tables(metadata, prefix=f"u{suffix}_")
    make_inbox_table(metadata, name=f"inbox_{suffix}")
    metadata.create_all(engine)
    yield metadata
    metadata.drop_all(engine)


def consumer(
    broker: txmq.Adapter,
    engine: Engine,
    metadata: MetaData,
    group: str,
    suffix: str,
    **kwargs: object,
) -> Consumer:
    return Consumer(
        broker=broker,
        engine=engine,
        group=group,
        inbox=metadata.tables[f"inbox_{suffix}"],
        poll_interval=0.2,
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_record_for_a_topic_nobody_consumes_yet_is_sent_and_reaches_a_later_group(
    broker: txmq.Adapter, engine: Engine, metadata: MetaData, suffix: str
) -> None:
    topic = f"orders.created.{suffix}"
    producer = Producer(
        group=f"shop{suffix}",
        engine=engine,
        broker=broker,
        tables=make_outbox_tables(metadata, prefix=f"u{suffix}_"),
    )
    message = txmq.Message(topic, b'{"order": 7}', key="customer-3")
    with Session(engine) as session, session.begin():
        producer.stage(session, message)
    assert producer.relay(concurrency=1).drain(timeout=30) == 1
    assert producer.store.get(message.id).state is RecordState.SENT

    received: list[str] = []
    late = consumer(broker, engine, metadata, f"cart{suffix}", suffix)
    late.add_handler(topic, lambda m, _session: received.append(m.id))
    with late:
        late.start()  # declares its queue: on RabbitMQ the held message is routed to it
        wait_for(lambda: received == [message.id], what="the late group to receive the message")
    producer.close()


def test_a_compensation_without_a_compensation_consumer_is_delivered_once_one_starts(
    broker: txmq.Adapter, engine: Engine, metadata: MetaData, suffix: str
) -> None:
    topic, bank = f"credits.{suffix}", f"bank{suffix}"
    crediter = consumer(broker, engine, metadata, f"credit{suffix}", suffix, compensate=True)

    @crediter.handler(topic)
    def credit(message: txmq.Message, session: Session) -> None:
        raise Reject("account closed")

    original = txmq.Message(topic, b"100", headers={"x-txmq-producer-group": bank})
    with crediter:
        crediter.start()
        with broker.publisher() as publisher:
            (outcome,) = publisher.publish([original])
        assert outcome.ok, outcome.error
        wait_for(lambda: crediter.stats.dead_lettered == 1, what="the dead letter")
        assert crediter.stats.compensations == 1
    with DeadLetters(broker, group=f"credit{suffix}", topic=topic) as dlq:
        (letter,) = dlq.list()
    assert letter.compensation_id == compensation_id(original.id)

    refunded: list[str] = []
    refunder = consumer(broker, engine, metadata, f"refunds{suffix}", suffix)

    @refunder.compensation(bank)
    def refund(compensation: Compensation, session: Session) -> None:
        refunded.append(compensation.original_id)

    with refunder:
        refunder.start()
        wait_for(lambda: refunded == [original.id], what="the compensation to be delivered")


@requires(_binds_by_hand_where_held)
def test_held_messages_are_listed_and_rerouted_by_the_cli(
    broker_url: str, broker: txmq.Adapter
) -> None:
    """RabbitMQ lists the held message and re-routes it once a queue is bound; Kafka holds
    nothing outside the topic itself, and says so."""
    from typer.testing import CliRunner

    from txmq.cli.root import app

    topic = f"audit.{uuid.uuid4().hex[:10]}"
    message = txmq.Message(topic, b"held")
    with broker.publisher() as publisher:
        (outcome,) = publisher.publish([message])
    assert outcome.ok, outcome.error
    runner = CliRunner()
    listed = runner.invoke(app, ["unroutable", "list", "--broker", broker_url, "--limit", "100000"])
    assert listed.exit_code == 0, listed.output
    holds = broker.unroutable_queue is not None
    assert (message.id in listed.output) is holds
    topology = txmq.Topology(f"late{uuid.uuid4().hex[:6]}", topic)
    if holds:
        # Bound by hand (raw pika), so that only the CLI re-routes it.
        from txmq.adapters.rabbitmq.adapter import RabbitMQAdapter
        from txmq.adapters.rabbitmq.connection import open_blocking

        assert isinstance(broker, RabbitMQAdapter)
        connection = open_blocking(broker.settings, name="test raw channel")
        channel = connection.channel()
        channel.queue_declare(topology.work_queue, durable=True)
        channel.queue_bind(topology.work_queue, broker.settings.exchange, routing_key=topic)
        try:
            rerouted = runner.invoke(
                app, ["unroutable", "reroute", "--broker", broker_url, "--topic", topic]
            )
            assert rerouted.exit_code == 0, rerouted.output
            assert "re-routed 1 message(s)" in rerouted.output
            depth = channel.queue_declare(topology.work_queue, passive=True).method.message_count
            assert depth == 1
        finally:
            channel.queue_delete(topology.work_queue)
            connection.close()
    else:
        rerouted = runner.invoke(app, ["unroutable", "reroute", "--broker", broker_url])
        assert rerouted.exit_code == 0, rerouted.output
        assert "re-routed 0 message(s)" in rerouted.output


def test_held_messages_are_listed_as_json_lines(broker_url: str, broker: txmq.Adapter) -> None:
    """One object per held message on stdout, the count on stderr; Kafka holds none and
    says so. The message is re-routed afterwards by a group declared for its topic."""
    from typer.testing import CliRunner

    from txmq.cli.root import app

    topic = f"audit.{uuid.uuid4().hex[:10]}"
    message = txmq.Message(topic, b"held", key="k1")
    with broker.publisher() as publisher:
        (outcome,) = publisher.publish([message])
    assert outcome.ok, outcome.error
    listed = CliRunner().invoke(
        app, ["unroutable", "list", "--broker", broker_url, "--limit", "100000", "--json"]
    )
    assert listed.exit_code == 0, listed.output
    found = [json.loads(line) for line in listed.stdout.splitlines()]
    assert listed.stderr == f"{len(found)} message(s) held\n"
    ours = [entry for entry in found if entry["id"] == message.id]
    if broker.unroutable_queue is None:
        assert (found, listed.stderr) == ([], "0 message(s) held\n")
        return
    broker.declare([txmq.Topology(f"late{uuid.uuid4().hex[:6]}", topic)])
    [entry] = ours
    assert {k: entry[k] for k in ("topic", "key", "size")} == {
        "topic": topic,
        "key": "k1",
        "size": 4,
    }
    assert isinstance(entry["headers"], dict)
