"""How a relay's lanes share the work on real brokers and PostgreSQL: one lane waits for new
records and the others join it for a backlog, and batches grow with the staging rate."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.orm import Session

import txmq
from txmq.outbox import Producer
from txmq.states import RecordState
from txmq.testing import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.database]


@dataclass
class Claims:
    """Every claim the relay made: the lane's thread and how many records it found."""

    made: list[tuple[str, int]] = field(default_factory=list)

    def empty(self) -> int:
        return sum(1 for _, found in self.made if not found)

    def found(self) -> list[int]:
        return [found for _, found in self.made if found]


@dataclass
class Rig:
    producer: Producer
    claims: Claims
    topic: str

    def stage(self, count: int, *, keyed: bool = True) -> list[str]:
        """Stage ``count`` messages in one transaction, with 7 keys or none (a claim keeps
        a key's records in order: a key that one lane has claimed records of waits)."""
        messages = [
            txmq.Message(self.topic, b"x", key=f"k{n % 7}" if keyed else None) for n in range(count)
        ]
        with Session(self.producer.engine) as session, session.begin():
            self.producer.stage(session, *messages)
        return [m.id for m in messages]

    def unsent(self) -> int:
        records = self.producer.tables.records
        query = select(func.count()).where(records.c.state != RecordState.SENT.value)
        with self.producer.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())


@pytest.fixture
def rig(
    broker_url: str, txmq_engine: Engine, unique: Callable[[str], str]
) -> Iterator[Callable[..., Rig]]:
    """``rig(**relay_options)``: a producer of a new group whose relay (started) counts its
    claims; the topic has a consumer group's queue, purged afterwards."""
    broker = txmq.connect(broker_url)
    topology = txmq.Topology(unique("lanes"), unique("lanes.topic"))
    broker.declare([topology])
    producers: list[Producer] = []

    def make(**relay_options: Any) -> Rig:
        producer = Producer(group=unique("relay"), engine=txmq_engine, broker=broker)
        producers.append(producer)
        claims = Claims()
        claim_ready = producer.store.claim_ready

        def counted(connection: Connection, *args: Any, **kwargs: Any) -> Any:
            found = claim_ready(connection, *args, **kwargs)
            claims.made.append((threading.current_thread().name, len(found)))
            return found

        producer.store.claim_ready = counted  # type: ignore[method-assign]
        producer.start(**relay_options)
        return Rig(producer, claims, topology.topic)

    try:
        yield make
    finally:
        for producer in producers:
            producer.close()
        if broker.system == "rabbitmq":
            broker.purge_queue(topology.work_queue)
        broker.close()


def test_a_record_staged_into_an_idle_relay_is_claimed_by_one_lane(
    rig: Callable[..., Rig],
) -> None:
    """Every lane used to wait for the NOTIFY of a staged record: each record cost one
    claim that found it and one that found nothing, per lane beyond the first."""
    relay = rig(concurrency=3, poll_interval=60.0)  # no lane looks on its own meanwhile
    relay.stage(1)
    wait_for(lambda: relay.unsent() == 0, what="the first record sent")
    before = relay.claims.empty()
    for _ in range(15):
        relay.stage(1)
        wait_for(lambda: relay.unsent() == 0, what="a record sent")
    # Each lane's first look, at start, may come this late on a loaded machine.
    assert relay.claims.empty() - before <= 3, relay.claims.made


def test_the_other_lanes_join_the_first_through_a_backlog(rig: Callable[..., Rig]) -> None:
    relay = rig(concurrency=2, batch_size=50, poll_interval=30.0)
    relay.stage(3000, keyed=False)
    wait_for(lambda: relay.unsent() == 0, timeout=60, what="the backlog sent")
    working = {lane for lane, found in relay.claims.made if found}
    assert working == {"txmq-relay-0", "txmq-relay-1"}


def test_batches_grow_with_the_staging_rate(rig: Callable[..., Rig]) -> None:
    """Staged one by one, about every 5 ms, with a 200 ms linger: a claim finds what was
    staged while the lane published and lingered, not one record at a time. (Without the
    linger, a claim a record; a slow publish may batch a few, but not to this bound.)"""
    relay = rig(concurrency=1, linger=0.2)
    relay.stage(1)
    wait_for(lambda: relay.unsent() == 0, what="the first record sent")
    relay.claims.made.clear()
    started = time.monotonic()
    for _ in range(60):
        relay.stage(1)
        time.sleep(0.005)  # the staging rate, not a wait for anything
    wait_for(lambda: relay.unsent() == 0, what="every record sent")
    elapsed = time.monotonic() - started
    found = relay.claims.found()
    assert sum(found) == 60
    # Every claim that found records is followed by 200 ms of linger.
    assert len(found) <= elapsed / 0.2 + 2, (found, elapsed)
