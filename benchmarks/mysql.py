"""The outbox on MariaDB beside PostgreSQL, in one run: relay throughput and wake-up latency.

Both databases get the same work, round by round in alternating order: ``count`` messages
staged and then relayed by a relay with the default settings (msg/s), and single messages
staged while the relay is idle, timed from commit to arrival at a consumer (the wake-up:
MariaDB has no NOTIFY, so the relay finds them by polling every ``poll_interval``;
PostgreSQL's relay LISTENs and is woken at once).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Engine, MetaData
from sqlalchemy.orm import Session

import txmq
from benchmarks.environment import remove_topologies
from benchmarks.harness import Results, alternate, wait
from benchmarks.relay import relay_run
from txmq.adapters.base import Subscription

#: How often an idle relay polls (the relay's default): the bound of MariaDB's wake-up.
POLL_INTERVAL = 1.0
#: Single messages timed per round and database.
WAKEUPS = 5

DATABASES = ("mariadb", "postgresql")


def wakeup_run(
    producer: txmq.Producer, adapter: txmq.Adapter, topology: txmq.Topology, samples: int
) -> float:
    """Median seconds from the commit of a message staged while the relay idles to its
    arrival at a consumer."""
    relay = producer.relay(poll_interval=POLL_INTERVAL)
    relay.start()
    taken: list[float] = []
    try:
        sources = adapter.sources_for([topology])
        with adapter.subscribe(topology.group, sources) as subscription:
            for n in range(samples + 1):
                received: list[txmq.Message] = []

                def arrived(
                    sub: Subscription = subscription, got: list[txmq.Message] = received
                ) -> bool:
                    deliveries = sub.poll(0.001)
                    got.extend(d.message for d in deliveries if d.message is not None)
                    sub.ack(deliveries)
                    return bool(got)

                # A random point in the relay's idle wait, as a real message would come.
                time.sleep(POLL_INTERVAL * (0.3 + 0.6 * (n % 3) / 2))
                with Session(producer.engine) as session, session.begin():
                    producer.stage(session, txmq.Message(topology.topic, b"wake"))
                committed = time.perf_counter()
                wait(arrived, 60, "a woken relay to publish")
                if n:  # the first one wakes a relay that has not polled yet
                    taken.append(time.perf_counter() - committed)
    finally:
        relay.stop()
    return statistics.median(taken)


def mysql_section(
    results: Results,
    broker: str,
    url: str,
    engines: dict[str, Engine],
    count: int,
    rounds: int,
) -> None:
    """Measure relay throughput and wake-up latency on each of ``engines`` (by database
    name, :data:`DATABASES`) into ``results``."""
    p = f"mysql.{broker}"
    results.figure(
        f"{p}.relay",
        f"relay -> {broker}, outbox on MariaDB",
        "msg/s",
        baseline=f"{p}.relay_postgresql",
    )
    results.figure(f"{p}.relay_postgresql", f"relay -> {broker}, outbox on PostgreSQL", "msg/s")
    results.figure(
        f"{p}.wakeup",
        f"wake-up on MariaDB (polling every {POLL_INTERVAL:g} s)",
        "s",
        better="lower",
        baseline=f"{p}.wakeup_postgresql",
    )
    results.figure(f"{p}.wakeup_postgresql", "wake-up on PostgreSQL (LISTEN)", "s", better="lower")
    adapter = txmq.connect(url)
    suffix = uuid.uuid4().hex[:8]
    topology = txmq.Topology(f"bench-{suffix}", f"bench.mysql.{suffix}")
    # Its own queue: the relay runs leave their messages in the first one.
    woken = txmq.Topology(f"bench-wake-{suffix}", f"bench.mysql.wake.{suffix}")
    adapter.declare([topology, woken])
    body = os.urandom(200)
    made: list[tuple[Engine, MetaData]] = []

    def way(database: str) -> Callable[[], dict[str, float]]:
        engine = engines[database]
        metadata = MetaData()
        tables = txmq.make_outbox_tables(metadata, prefix=f"bench_my_{database[:2]}_{suffix}_")
        metadata.create_all(engine)
        made.append((engine, metadata))
        producer = txmq.Producer(group=topology.group, engine=engine, broker=adapter, tables=tables)
        tail = "" if database == "mariadb" else f"_{database}"

        def measure() -> dict[str, float]:
            rate = relay_run(producer, topology.topic, count, body)
            latency = wakeup_run(producer, adapter, woken, WAKEUPS)
            return {f"{p}.relay{tail}": rate.per_second, f"{p}.wakeup{tail}": latency}

        return measure

    try:
        alternate(rounds, {database: way(database) for database in DATABASES}, results)
    finally:
        for engine, metadata in made:
            metadata.drop_all(engine)
        remove_topologies(broker, url, [topology, woken], suffix)
        adapter.close()
