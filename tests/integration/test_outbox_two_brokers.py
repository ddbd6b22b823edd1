"""Two producer groups on one outbox table, one publishing to RabbitMQ and one to Kafka.

(Moved from the producer contract suite: it needs both real brokers at once, so it is no
test of one adapter.) The fixtures and helpers are the producer suite's and the suites'
shared ones.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, MetaData
from sqlalchemy.orm import Session

import txmq
from txmq.outbox import Producer, make_outbox_tables
from txmq.states import RecordState
from txmq.testing import wait_for
from txmq.testing.contract import fixtures
from txmq.testing.contract import producer as suite
from txmq.wire import HEADER_PRODUCER_GROUP

pytestmark = [pytest.mark.broker, pytest.mark.database]

engine = fixtures.engine
prefix, metadata, topic = suite.prefix, suite.metadata, suite.topic
declare, receive, nothing_more = suite.declare, suite.receive, suite.nothing_more


def test_groups_sharing_an_outbox_each_reach_only_their_own_broker(
    engine: Engine, metadata: MetaData, prefix: str, rabbitmq_url: str, kafka_url: str, topic: str
) -> None:
    """Group A publishes to RabbitMQ, group B to Kafka, from one outbox table, both relays
    running: each message arrives on its own group's broker only, marked SENT there."""
    rabbitmq, kafka = txmq.connect(rabbitmq_url), txmq.connect(kafka_url)
    tables = make_outbox_tables(metadata, prefix=prefix)
    producers = {
        broker.system: Producer(
            group=f"{broker.system}-{prefix.strip('_')}",
            engine=engine,
            broker=broker,
            tables=tables,
        )
        for broker in (rabbitmq, kafka)
    }
    try:
        for broker in (rabbitmq, kafka):
            declare(broker, topic, "cart")
        staged: dict[str, list[str]] = {}
        with Session(engine) as session, session.begin():
            for system, producer in producers.items():
                messages = [txmq.Message(topic, f"{system} {i}".encode()) for i in range(5)]
                producer.stage(session, *messages)
                staged[system] = [m.id for m in messages]
        for producer in producers.values():
            producer.start()
        for broker in (rabbitmq, kafka):
            received = receive(broker, "cart", topic, 5)
            assert sorted(m.id for m in received) == sorted(staged[broker.system])
            group = producers[broker.system].group
            assert {m.headers[HEADER_PRODUCER_GROUP] for m in received} == {group}
            assert nothing_more(broker, "cart", topic)
        for system, producer in producers.items():
            # A relay marks its records SENT after the broker confirmed them: a consumer may
            # have them before that commit.
            wait_for(
                lambda p=producer, s=system: (
                    {p.store.get(i).state for i in staged[s]} == {RecordState.SENT}
                ),
                what=f"the {system} records marked SENT",
            )
    finally:
        for producer in producers.values():
            producer.close()
        rabbitmq.close()
        kafka.close()
