"""Publish throughput: txmq's RabbitMQ Publisher against a raw pika pipelined-confirm baseline.

Both publish the same persistent messages (same body size, ``message_id`` and txmq headers,
``mandatory``) to one durable queue and count a message only once the broker confirmed it.
The baseline keeps ``--window`` messages unconfirmed on a ``SelectConnection``; txmq
publishes ``--batch`` messages per :meth:`Publisher.publish` call. Rounds alternate between
the two so both see the same broker state; the queue is purged after every round.

    python benchmarks/bench_rabbitmq_publish.py --count 20000 --size 200 --batch 500
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from typing import Any

import pika

import txmq
from txmq import Message, Topology
from txmq.adapters.rabbitmq.adapter import RabbitMQAdapter
from txmq.adapters.rabbitmq.connection import connection_parameters, open_blocking
from txmq.adapters.rabbitmq.wire import PERSISTENT, encode_headers


def raw_pika(adapter: RabbitMQAdapter, messages: list[Message], window: int) -> float:
    """Seconds from the first publish to the last confirm, pipelining ``window`` publishes."""
    settings = adapter.settings
    params = connection_parameters(settings, name="bench raw pika")
    state: dict[str, Any] = {"sent": 0, "confirmed": 0, "failed": 0, "started": 0.0}
    channel: Any = None

    def fill() -> None:
        while state["sent"] < len(messages) and state["sent"] - state["confirmed"] < window:
            message = messages[state["sent"]]
            properties = pika.BasicProperties(
                message_id=message.id, delivery_mode=PERSISTENT, headers=encode_headers(message)
            )
            channel.basic_publish(settings.exchange, message.topic, message.body, properties, True)
            state["sent"] += 1

    def on_confirm(frame: Any) -> None:
        method = frame.method
        count = method.delivery_tag - state["confirmed"] if method.multiple else 1
        state["confirmed"] += count
        if isinstance(method, pika.spec.Basic.Nack):
            state["failed"] += count
        if state["confirmed"] == len(messages):
            state["elapsed"] = time.perf_counter() - state["started"]
            connection.close()
        else:
            fill()

    def on_confirm_mode(_frame: Any) -> None:
        state["started"] = time.perf_counter()
        fill()

    def on_channel(opened: Any) -> None:
        nonlocal channel
        channel = opened
        channel.confirm_delivery(ack_nack_callback=on_confirm, callback=on_confirm_mode)

    connection = pika.SelectConnection(
        params,
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, _reason: c.ioloop.stop(),
    )
    connection.ioloop.start()
    connection.ioloop.close()
    assert state["failed"] == 0, f"{state['failed']} messages nacked"
    return float(state["elapsed"])


def txmq_publisher(adapter: RabbitMQAdapter, messages: list[Message], batch: int) -> float:
    """Seconds to publish ``messages`` in ``batch``-sized publish() calls (connected first)."""
    with adapter.publisher() as publisher:
        assert publisher.publish([Message(messages[0].topic, b"warm-up")])[0].ok
        started = time.perf_counter()
        for start in range(0, len(messages), batch):
            outcomes = publisher.publish(messages[start : start + batch])
            failed = [o for o in outcomes if not o.ok]
            assert not failed, failed[0].error
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("TXMQ_TEST_RABBITMQ_URL"))
    parser.add_argument("--count", type=int, default=20_000, help="messages per round")
    parser.add_argument("--size", type=int, default=200, help="body bytes")
    parser.add_argument("--batch", type=int, default=500, help="messages per txmq publish()")
    parser.add_argument("--window", type=int, default=1500, help="raw pika unconfirmed window")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each, alternating")
    args = parser.parse_args()
    if not args.url:
        parser.error("give --url or set TXMQ_TEST_RABBITMQ_URL")

    adapter = txmq.connect(args.url)
    assert isinstance(adapter, RabbitMQAdapter)
    suffix = uuid.uuid4().hex[:8]
    topology = Topology(f"bench-{suffix}", f"bench.publish.{suffix}")
    adapter.declare([topology])
    body = os.urandom(args.size)
    rates: dict[str, list[float]] = {"raw pika": [], "txmq": []}
    try:
        for round_number in range(1, args.rounds + 1):
            for name, results in rates.items():
                messages = [Message(topology.topic, body) for _ in range(args.count)]
                cpu_started = time.process_time()
                if name == "raw pika":
                    elapsed = raw_pika(adapter, messages, args.window)
                else:
                    elapsed = txmq_publisher(adapter, messages, args.batch)
                # Client CPU (all threads): steadier than wall time on a busy machine.
                cpu_us = (time.process_time() - cpu_started) / args.count * 1e6
                adapter.purge_queue(topology.work_queue)
                results.append(args.count / elapsed)
                print(
                    f"round {round_number} {name:8s}: {args.count / elapsed:9,.0f} msg/s"
                    f"  client CPU {cpu_us:5.1f} us/msg"
                )
    finally:
        adapter.purge_queue(topology.work_queue)
        _delete_queues(adapter, topology)

    raw, ours = (statistics.median(rates[name]) for name in ("raw pika", "txmq"))
    print(
        f"\n{args.count} persistent {args.size} B messages x {args.rounds} rounds; "
        f"raw window {args.window}, txmq batch {args.batch}"
    )
    print(f"raw pika pipelined confirms (median): {raw:9,.0f} msg/s")
    print(f"txmq Publisher.publish      (median): {ours:9,.0f} msg/s")
    print(f"ratio txmq / raw: {ours / raw:.2f}")


def _delete_queues(adapter: RabbitMQAdapter, topology: Topology) -> None:
    settings = adapter.settings
    connection = open_blocking(settings, name="bench cleanup")
    channel = connection.channel()
    for queue in (topology.work_queue, topology.dead_letter_queue):
        channel.queue_delete(queue)
    connection.close()


if __name__ == "__main__":
    main()
