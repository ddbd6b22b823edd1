"""Several workers of one consumer on RabbitMQ share the backlog (real RabbitMQ, PostgreSQL)."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, func, select
from sqlalchemy.orm import Session

import txmq
from txmq.adapters import Topology
from txmq.consumer import Consumer, make_inbox_table
from txmq.message import Message
from txmq.testing import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]


def test_a_slow_message_does_not_hold_back_fast_ones_with_three_workers(
    rabbitmq_url: str, database_url: str
) -> None:
    suffix = uuid.uuid4().hex[:10]
    metadata = MetaData()
    inbox = make_inbox_table(metadata, name=f"inbox_{suffix}")
    applied = Table(
        f"applied_{suffix}",
        metadata,
        Column("row", Integer, primary_key=True, autoincrement=True),
        Column("message_id", String(80), nullable=False),
    )
    engine = create_engine(database_url, pool_size=5)
    metadata.create_all(engine)
    adapter = txmq.connect(rabbitmq_url)
    group, topic = f"g{suffix}", f"t{suffix}.evt"
    adapter.declare([Topology(group, topic)])
    # The slow message is first in the queue: whoever takes it would, with a deep
    # prefetch, also take the fast ones behind it.
    slow = Message(topic, b"slow")
    fast = [Message(topic, b"fast") for _ in range(50)]
    with adapter.publisher() as publisher:
        assert all(o.ok for o in publisher.publish([slow, *fast]))

    slow_running, slow_may_finish = threading.Event(), threading.Event()
    consumer = Consumer(  # default prefetch
        broker=adapter, engine=engine, group=group, inbox=inbox, concurrency=3, poll_interval=0.2
    )

    @consumer.handler(topic)
    def handle(message: Message, session: Session) -> None:
        if message.body == b"slow":
            slow_running.set()
            slow_may_finish.wait(120)
        session.execute(applied.insert().values(message_id=message.id))

    def applied_ids() -> list[str]:
        with engine.connect() as connection:
            return list(connection.execute(select(applied.c.message_id)).scalars())

    def applied_count() -> int:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(applied)).scalar_one())

    try:
        consumer.start()
        wait_for(slow_running.is_set, 60, "the slow message to start")
        # Well inside the 60 s heartbeat, so no connection drop hands messages around.
        wait_for(lambda: applied_count() == len(fast), 30, "the fast ones, while the slow one runs")
        assert slow.id not in applied_ids()  # still running
        slow_may_finish.set()
        wait_for(lambda: consumer.stats.processed == len(fast) + 1, 60, "the slow one")
    finally:
        slow_may_finish.set()
        consumer.stop()
        adapter.close()
    try:
        assert sorted(applied_ids()) == sorted(m.id for m in [slow, *fast])
        assert consumer.stats.duplicates == 0
    finally:
        metadata.drop_all(engine)
        engine.dispose()
