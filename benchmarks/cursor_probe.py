"""A design probe, run on demand: what an append-only outbox read by cursor would relay.

The relay today claims its records (``FOR UPDATE SKIP LOCKED``) and marks every published
one SENT: two heap writes per record, and index entries for the state. Issue 13 names the
design that writes nothing per record: an append-only table whose relay keeps one cursor
per producer group, with retention by dropping partitions. This module measures that design
before it is built, in the same rounds as the raw baseline and today's relay:

* the records are the outbox's (same columns, staged 1000 per transaction), plus the
  ``xid8`` of the transaction that wrote them, ``pg_current_xact_id()``;
* a batch is read in ``(txid, seq)`` order after the cursor, and only from transactions
  older than the snapshot's ``xmin``: every transaction below it has ended, so no record
  can still appear behind the cursor (PgQ's rule; a long transaction anywhere in the
  database holds the relay back, which the real design would have to bound);
* the batch is decoded and published exactly as the relay does (``restore_message``, the
  adapter's relay-lane publisher, a Kafka transaction or pipelined confirms per batch),
  then the cursor row is moved: one UPDATE per batch, none per record;
* the table holds ``history`` older records before the cursor, as the relay's does.

``python -m benchmarks.cursor_probe --broker kafka`` prints each round and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from types import MappingProxyType

from sqlalchemy import Engine, MetaData, create_engine, text

import txmq
from benchmarks import kafka_raw, rabbitmq_raw
from benchmarks.environment import remove_topologies
from benchmarks.harness import CpuClock, Rate, Results, alternate
from benchmarks.relay import add_history, relay_run
from txmq.adapters.base import Publisher
from txmq.message import restore_message

BODY = 200
BATCH = 1000


class CursorRelay:
    """The probe: an append-only table and one cursor row, read and published by batch."""

    def __init__(self, engine: Engine, name: str, group: str) -> None:
        self.engine = engine
        self.table = f"bench_cursor_{name}"
        self.cursors = f"bench_cursor_{name}_at"
        self.group = group
        with engine.begin() as connection:
            connection.execute(
                text(
                    f"CREATE TABLE {self.table} (seq bigserial PRIMARY KEY,"
                    " txid xid8 NOT NULL DEFAULT pg_current_xact_id(),"
                    " producer_group text NOT NULL, id text NOT NULL, topic text NOT NULL,"
                    " key text, headers text NOT NULL, body bytea NOT NULL,"
                    " created_at timestamptz NOT NULL DEFAULT now())"
                )
            )
            connection.execute(text(f"CREATE INDEX ON {self.table} (producer_group, txid, seq)"))
            connection.execute(
                text(
                    f"CREATE TABLE {self.cursors} (producer_group text PRIMARY KEY,"
                    " txid xid8 NOT NULL, seq bigint NOT NULL)"
                )
            )
            connection.execute(
                text(f"INSERT INTO {self.cursors} VALUES (:group, '0', 0)"), {"group": group}
            )

    def stage(self, topic: str, count: int, body: bytes) -> None:
        headers = json.dumps({"content-type": "application/octet-stream"})
        with self.engine.begin() as connection:
            for start in range(0, count, 1000):
                connection.execute(
                    text(
                        f"INSERT INTO {self.table} (producer_group, id, topic, headers, body)"
                        " VALUES (:group, :id, :topic, :headers, :body)"
                    ),
                    [
                        {
                            "group": self.group,
                            "id": uuid.uuid4().hex,
                            "topic": topic,
                            "headers": headers,
                            "body": body,
                        }
                        for _ in range(min(1000, count - start))
                    ],
                )

    def skip_history(self) -> None:
        """Move the cursor past every record there is (the history a relay has sent)."""
        with self.engine.begin() as connection:
            connection.execute(
                text(
                    f"UPDATE {self.cursors} SET (txid, seq) = (SELECT txid, seq FROM {self.table}"
                    " ORDER BY txid DESC, seq DESC LIMIT 1) WHERE producer_group = :group"
                ),
                {"group": self.group},
            )

    def relay_batch(self, publisher: Publisher) -> int:
        with self.engine.begin() as connection:
            # Reads first, so that this transaction has no xid of its own yet and does not
            # hold its own snapshot's xmin back; the cursor row is written last.
            rows = connection.execute(
                text(
                    f"SELECT r.seq, r.txid, r.id, r.topic, r.key, r.headers, r.body"
                    f" FROM {self.cursors} c JOIN LATERAL (SELECT * FROM {self.table} r"
                    "  WHERE r.producer_group = c.producer_group"
                    "  AND (r.txid, r.seq) > (c.txid, c.seq)"
                    "  AND r.txid < pg_snapshot_xmin(pg_current_snapshot())"
                    "  ORDER BY r.txid, r.seq LIMIT :limit) r ON true"
                    " WHERE c.producer_group = :group"
                ),
                {"group": self.group, "limit": BATCH},
            ).all()
            if not rows:
                return 0
            decoded: dict[str, MappingProxyType[str, str]] = {}
            messages = []
            for _seq, _txid, message_id, topic, key, headers, body in rows:
                mapping = decoded.get(headers)
                if mapping is None:
                    mapping = decoded[headers] = MappingProxyType(json.loads(headers))
                messages.append(
                    restore_message(
                        topic=topic, body=bytes(body), key=key, headers=mapping, id=message_id
                    )
                )
            outcomes = publisher.publish(messages)
            assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok][:3]
            last_seq, last_txid = rows[-1][0], rows[-1][1]
            connection.execute(
                text(
                    f"UPDATE {self.cursors} SET txid = :txid, seq = :seq"
                    " WHERE producer_group = :group"
                ),
                {"txid": last_txid, "seq": last_seq, "group": self.group},
            )
            return len(rows)

    def run(self, adapter: txmq.Adapter, topic: str, count: int, body: bytes) -> Rate:
        self.stage(topic, count, body)
        publisher = adapter.publisher(identity=f"probe-{uuid.uuid4().hex[:8]}")
        try:
            publisher.publish([txmq.Message(topic, body)])  # connected before the clock
            clock = CpuClock()
            sent = 0
            deadline = time.monotonic() + 60
            while sent < count:
                done = self.relay_batch(publisher)
                if not done:
                    # A transaction elsewhere in the database, older than the staging, holds
                    # the snapshot's xmin back: that is the design's cost, and it counts.
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the cursor relay is stuck at {sent} of {count}")
                    time.sleep(0.001)
                sent += done
            return clock.rate(count)
        finally:
            publisher.close()

    def drop(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(f"DROP TABLE {self.table}, {self.cursors}"))


def probe(broker: str, url: str, database_url: str, count: int, history: int, rounds: int) -> None:
    results = Results()
    engine = create_engine(database_url)
    suffix = uuid.uuid4().hex[:8]
    adapter = txmq.connect(url)
    topology = txmq.Topology(f"probe-{suffix}", f"bench.probe.{suffix}")
    adapter.declare([topology])
    topic, group = topology.topic, f"bench-probe-{suffix}"
    body = os.urandom(BODY)
    results.figure("raw", "raw baseline", "msg/s")
    results.figure("relay", f"relay, {history:,} SENT rows", "msg/s", baseline="raw")
    results.figure("cursor", f"cursor probe, {history:,} rows behind", "msg/s", baseline="raw")
    results.figure("cpu.raw", "raw: CPU per 1,000", "s", better="lower")
    results.figure("cpu.relay", "relay: CPU per 1,000", "s", better="lower", baseline="cpu.raw")
    results.figure("cpu.cursor", "probe: CPU per 1,000", "s", better="lower", baseline="cpu.raw")

    metadata = MetaData()
    tables = txmq.make_outbox_tables(metadata, prefix=f"bench_probe_{suffix}_")
    metadata.create_all(engine)
    add_history(engine, tables, group, topic, history, body)
    producer = txmq.Producer(group=group, engine=engine, broker=adapter, tables=tables)
    cursor = CursorRelay(engine, suffix, group)
    cursor.stage(topic, history, body)
    cursor.skip_history()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"VACUUM ANALYZE {cursor.table}"))

    def emptied(figures: dict[str, float]) -> dict[str, float]:
        if broker == "rabbitmq":
            adapter.purge_queue(topology.work_queue)
        return figures

    def raw() -> dict[str, float]:
        if broker == "rabbitmq":
            rate = rabbitmq_raw.pipelined_confirms(url, topic, count, body)
        else:
            rate = kafka_raw.transactional(url, topic, count, body, BATCH)
        return emptied({"raw": rate.per_second, "cpu.raw": rate.cpu_per_1000})

    def relay() -> dict[str, float]:
        rate = relay_run(producer, topic, count, body)
        return emptied({"relay": rate.per_second, "cpu.relay": rate.cpu_per_1000})

    def cursor_run() -> dict[str, float]:
        rate = cursor.run(adapter, topic, count, body)
        return emptied({"cursor": rate.per_second, "cpu.cursor": rate.cpu_per_1000})

    try:
        alternate(rounds, {"raw": raw, "relay": relay, "cursor": cursor_run}, results)
    finally:
        producer.close()
        cursor.drop()
        metadata.drop_all(engine)
        remove_topologies(broker, url, [topology], suffix)
        adapter.close()
        engine.dispose()
    for name, entry in results.report().items():
        ratio = entry["ratio"]
        shown = "" if ratio is None else f"  ratio {ratio['median']:.2f}x"
        spread = f"({entry['min']:,.4g}..{entry['max']:,.4g})"
        print(f"{broker} {name:12} {entry['median']:>10,.4g} {entry['unit']:6} {spread}{shown}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cursor_probe")
    parser.add_argument("--broker", choices=("rabbitmq", "kafka"), required=True)
    parser.add_argument("--url", help="broker URL (default $TXMQ_TEST_<BROKER>_URL)")
    parser.add_argument("--database", default=os.environ.get("TXMQ_TEST_DATABASE_URL"))
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--history", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    url = args.url or os.environ.get(f"TXMQ_TEST_{args.broker.upper()}_URL")
    if not url or not args.database:
        sys.exit("give --url and --database (or the TXMQ_TEST_* variables)")
    probe(args.broker, url, args.database, args.count, args.history, args.rounds)


if __name__ == "__main__":
    main()
