"""The RabbitMQ adapter's publish path against raw pika, run on demand.

No database is involved: both sides publish prebuilt messages of ``BODY`` bytes to txmq's
exchange with pipelined confirms, counted once the broker confirmed them, to a queue bound
for the topic. txmq publishes them with its publisher (the relay's batches of ``BATCH``),
each message with the wire headers the relay sends (id, topic, key, producer group); the
baseline is :func:`benchmarks.rabbitmq_raw.pipelined_confirms`, which sends one id header.
The two alternate round by round; the report gives the rates, the client CPU per message
(every thread of the process) and their ratios, paired by round.

``python -m benchmarks.publish_cost`` (``--count``, ``--rounds``, ``--url``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid

import pika

import txmq
from benchmarks import rabbitmq_raw
from benchmarks.environment import pika_parameters, rabbitmq_settings
from benchmarks.harness import CpuClock, Rate, Results, alternate
from txmq.wire import HEADER_PRODUCER_GROUP

BODY = 200
BATCH = 1000
KEYS = 16


def txmq_publish(broker: txmq.Adapter, topic: str, count: int) -> Rate:
    """msg/s of ``count`` prebuilt messages through the adapter's publisher."""
    messages = [
        txmq.Message(topic, b"x" * BODY, key=f"k{n % KEYS}", headers={HEADER_PRODUCER_GROUP: "g"})
        for n in range(count)
    ]
    with broker.publisher() as publisher:
        publisher.connect()
        clock = CpuClock()
        for start in range(0, count, BATCH):
            outcomes = publisher.publish(messages[start : start + BATCH])
            if not all(outcome.ok for outcome in outcomes):
                raise RuntimeError(f"a publish failed: {next(o for o in outcomes if not o.ok)}")
        return clock.rate(count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.publish_cost")
    parser.add_argument("--url", default=os.environ.get("TXMQ_TEST_RABBITMQ_URL"))
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("give --url or set TXMQ_TEST_RABBITMQ_URL")
    topic = f"bench.publish.{uuid.uuid4().hex[:8]}"
    queue = f"{topic}.q"
    connection = pika.BlockingConnection(pika_parameters(args.url))
    channel = connection.channel()
    broker = txmq.connect(args.url)
    try:
        with broker.publisher() as publisher:
            publisher.connect()  # declares the exchange
        channel.queue_declare(queue)
        channel.queue_bind(queue, rabbitmq_settings(args.url).exchange, topic)

        results = Results()
        results.figure("publish.raw", "raw pika, pipelined confirms", "msg/s")
        results.figure("publish.txmq", "txmq publisher", "msg/s", baseline="publish.raw")
        results.figure("cpu.raw", "raw pika, client CPU per message", "µs", better="lower")
        results.figure(
            "cpu.txmq",
            "txmq publisher, client CPU per message",
            "µs",
            better="lower",
            baseline="cpu.raw",
        )

        def raw() -> dict[str, float]:
            rate = rabbitmq_raw.pipelined_confirms(args.url, topic, args.count, b"x" * BODY)
            channel.queue_purge(queue)
            return {"publish.raw": rate.per_second, "cpu.raw": rate.cpu_per_1000 * 1000}

        def ours() -> dict[str, float]:
            rate = txmq_publish(broker, topic, args.count)
            channel.queue_purge(queue)
            return {"publish.txmq": rate.per_second, "cpu.txmq": rate.cpu_per_1000 * 1000}

        alternate(args.rounds, {"raw": raw, "txmq": ours}, results)
    finally:
        channel.queue_delete(queue)
        connection.close()
        broker.close()
    report = results.report()
    for name, entry in report.items():
        ratio = entry["ratio"]
        paired = (
            f"  {ratio['median']:.2f}x [{ratio['min']:.2f}-{ratio['max']:.2f}]" if ratio else ""
        )
        print(
            f"{name:14} {entry['median']:>10,.1f} [{entry['min']:,.1f}-{entry['max']:,.1f}] "
            f"{entry['unit']}{paired}"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
