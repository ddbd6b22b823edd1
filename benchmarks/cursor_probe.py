"""A design probe, run on demand: what an append-only outbox read by cursor would relay.

The relay today claims its records (``FOR UPDATE SKIP LOCKED``) and marks every published
one SENT: a row lock and a new row version, with its index entries, per record. Issue 13
names the design that writes nothing per record: an append-only table whose relay keeps one
cursor per producer group, with retention by dropping partitions. This module measures that
design before it is built, in the same rounds as the raw baseline and today's relay:

* the records carry what the relay needs to publish them (group, id, topic, key, headers,
  body, creation time; none of the state columns), staged 1000 per transaction, plus the
  ``xid8`` of the transaction that wrote them, ``pg_current_xact_id()``;
* a batch is read in ``(txid, seq)`` order after the cursor, and only from transactions
  older than the snapshot's ``xmin``: every transaction below it has ended, so no record
  can still appear behind the cursor. This rule is simpler than PgQ's (a batch is what one
  snapshot sees and the one before did not) and has a cost PgQ's does not: any transaction
  on the server that holds an xid holds the relay back for as long as it lasts, and a
  prepared transaction for ever;
* the batch is decoded and published exactly as the relay does (``restore_message``, the
  adapter's relay-lane publisher, a Kafka transaction or pipelined confirms per batch),
  then the cursor row is moved, on the condition that nobody else moved it: one UPDATE per
  batch, none per record;
* the table holds ``history`` older records before the cursor, as the relay's does.

Besides the rates it reports, per published record, the WAL that each design writes while
it relays (the staging excluded), and how long the probe slept after empty batches.

``python -m benchmarks.cursor_probe --broker kafka`` prints each round and the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from types import MappingProxyType

from sqlalchemy import Engine, MetaData, create_engine, text

import txmq
from benchmarks import kafka_raw, rabbitmq_raw
from benchmarks.database import wal_position
from benchmarks.environment import remove_topologies
from benchmarks.harness import CpuClock, Rate, Results, alternate
from benchmarks.relay import add_history, relay_drain, stage
from txmq.adapters.base import Publisher
from txmq.message import restore_message
from txmq.wire import HEADER_PRODUCER_GROUP

BODY = 200
BATCH = 1000


class CursorMoved(RuntimeError):
    """The cursor row is not where this batch read it: another relay moved it."""


@dataclass(frozen=True)
class CursorRun:
    rate: Rate
    #: WAL written while relaying (the staging excluded), bytes per published record.
    wal_per_record: float
    #: Seconds slept after empty batches while records were still to come.
    stalled: float


class CursorRelay:
    """The probe: an append-only table and one cursor row, read and published by batch."""

    #: How long the probe may make no progress before it gives up.
    NO_PROGRESS_TIMEOUT = 60.0

    def __init__(self, engine: Engine, name: str, group: str) -> None:
        self.engine = engine
        self.table = f"bench_cursor_{name}"
        self.cursors = f"bench_cursor_{name}_at"
        self.group = group

    def create(self) -> None:
        with self.engine.begin() as connection:
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
                text(f"INSERT INTO {self.cursors} VALUES (:group, '0', 0)"),
                {"group": self.group},
            )

    def stage(self, topic: str, count: int, body: bytes) -> None:
        # The headers the producer writes on every staged record.
        headers = json.dumps({HEADER_PRODUCER_GROUP: self.group})
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
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text(f"VACUUM ANALYZE {self.table}"))

    def relay_batch(self, publisher: Publisher) -> int:
        with self.engine.begin() as connection:
            # Reads and publishes first and writes the cursor last: until that UPDATE this
            # transaction has no xid, so while it publishes it holds back no snapshot's
            # xmin, its own relay's next batch or another group's.
            rows = connection.execute(
                text(
                    f"SELECT c.txid, c.seq, r.seq, r.txid, r.id, r.topic, r.key, r.headers,"
                    f" r.body FROM {self.cursors} c JOIN LATERAL (SELECT * FROM {self.table} r"
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
            for *_positions, message_id, topic, key, headers, body in rows:
                mapping = decoded.get(headers)
                if mapping is None:
                    mapping = decoded[headers] = MappingProxyType(json.loads(headers))
                messages.append(
                    restore_message(
                        topic=topic, body=bytes(body), key=key, headers=mapping, id=message_id
                    )
                )
            outcomes = publisher.publish(messages)
            refused = [outcome.error for outcome in outcomes if not outcome.ok]
            if refused:
                # The probe stages nothing a broker refuses; the real design would move
                # such a record aside in this transaction (see docs/performance.md).
                raise RuntimeError(f"{len(refused)} records refused, first: {refused[0]}")
            cursor_txid, cursor_seq = rows[0][0], rows[0][1]
            last_seq, last_txid = rows[-1][2], rows[-1][3]
            moved = connection.execute(
                text(
                    f"UPDATE {self.cursors} SET txid = :txid, seq = :seq"
                    " WHERE producer_group = :group AND txid = :was_txid AND seq = :was_seq"
                ),
                {
                    "txid": last_txid,
                    "seq": last_seq,
                    "group": self.group,
                    "was_txid": cursor_txid,
                    "was_seq": cursor_seq,
                },
            )
            if moved.rowcount != 1:
                raise CursorMoved(f"the cursor of {self.group} moved under this batch")
            return len(rows)

    def run(self, adapter: txmq.Adapter, topic: str, count: int, body: bytes) -> CursorRun:
        self.stage(topic, count, body)
        publisher = adapter.publisher(identity=f"probe-{uuid.uuid4().hex[:8]}")
        try:
            publisher.connect()  # as the relay's lanes do before the clock
            wal_before = wal_position(self.engine)
            clock = CpuClock()
            sent = 0
            stalled = 0.0
            progress = time.monotonic()
            while sent < count:
                done = self.relay_batch(publisher)
                now = time.monotonic()
                if done:
                    sent += done
                    progress = now
                    continue
                # A transaction elsewhere on the server, older than the staging, holds the
                # snapshot's xmin back: that is the design's cost, and it counts.
                if now - progress > self.NO_PROGRESS_TIMEOUT:
                    raise TimeoutError(f"the cursor relay is stuck at {sent} of {count}")
                time.sleep(0.001)
                stalled += time.monotonic() - now
            rate = clock.rate(count)
            wal = (wal_position(self.engine) - wal_before) / count
            return CursorRun(rate, wal, stalled)
        finally:
            publisher.close()

    def drop(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(f"DROP TABLE IF EXISTS {self.table}, {self.cursors}"))


def probe(broker: str, url: str, database_url: str, count: int, history: int, rounds: int) -> None:
    results = Results()
    suffix = uuid.uuid4().hex[:8]
    topology = txmq.Topology(f"probe-{suffix}", f"bench.probe.{suffix}")
    topic, group = topology.topic, f"bench-probe-{suffix}"
    body = os.urandom(BODY)
    results.figure("raw", "raw baseline", "msg/s")
    results.figure("relay", f"relay, {history:,} SENT rows", "msg/s", baseline="raw")
    results.figure("cursor", f"cursor probe, {history:,} rows behind", "msg/s", baseline="raw")
    results.figure("cursor/relay", "cursor probe against the relay", "msg/s", baseline="relay")
    results.figure("cpu.raw", "raw: CPU per 1,000", "s", better="lower")
    results.figure("cpu.relay", "relay: CPU per 1,000", "s", better="lower", baseline="cpu.raw")
    results.figure("cpu.cursor", "probe: CPU per 1,000", "s", better="lower", baseline="cpu.raw")
    results.figure("wal.relay", "relay: WAL per record", "B", better="lower")
    results.figure("wal.cursor", "probe: WAL per record", "B", better="lower")
    results.figure("stalled", "probe: slept after empty batches", "s", better="lower")

    with contextlib.ExitStack() as cleanup:
        engine = create_engine(database_url)
        cleanup.callback(engine.dispose)
        adapter = txmq.connect(url)
        cleanup.callback(adapter.close)
        cleanup.callback(remove_topologies, broker, url, [topology], suffix)
        adapter.declare([topology])
        metadata = MetaData()
        tables = txmq.make_outbox_tables(metadata, prefix=f"bench_probe_{suffix}_")
        cleanup.callback(metadata.drop_all, engine)
        metadata.create_all(engine)
        add_history(engine, tables, group, topic, history, body)
        producer = txmq.Producer(group=group, engine=engine, broker=adapter, tables=tables)
        cleanup.callback(producer.close)
        cursor = CursorRelay(engine, suffix, group)
        cleanup.callback(cursor.drop)
        cursor.create()
        cursor.stage(topic, history, body)
        cursor.skip_history()

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
            stage(producer, topic, count, body)
            before = wal_position(engine)
            rate = relay_drain(producer, count)
            wal = (wal_position(engine) - before) / count
            return emptied(
                {"relay": rate.per_second, "cpu.relay": rate.cpu_per_1000, "wal.relay": wal}
            )

        def cursor_run() -> dict[str, float]:
            run = cursor.run(adapter, topic, count, body)
            return emptied(
                {
                    "cursor": run.rate.per_second,
                    "cursor/relay": run.rate.per_second,
                    "cpu.cursor": run.rate.cpu_per_1000,
                    "wal.cursor": run.wal_per_record,
                    "stalled": run.stalled,
                }
            )

        alternate(rounds, {"raw": raw, "relay": relay, "cursor": cursor_run}, results)
    for name, entry in results.report().items():
        ratio = entry["ratio"]
        shown = (
            ""
            if ratio is None
            else f"  ratio {ratio['median']:.2f}x ({ratio['min']:.2f}..{ratio['max']:.2f})"
        )
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
