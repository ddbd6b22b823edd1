"""Raw pika baselines: publishing with pipelined confirms, with confirm-each, and consuming.

They publish what the relay publishes (persistent messages with a ``message_id`` and an id
header, ``mandatory``, to txmq's exchange with the topic as routing key) and count a message
only once the broker confirmed it; the consumer acknowledges manually, prefetch 1000, one
multiple-ack every 100 messages. Nothing of txmq is used but its URL parsing.
"""

from __future__ import annotations

import uuid
from typing import Any

import pika

from benchmarks.environment import pika_parameters, rabbitmq_settings
from benchmarks.harness import CpuClock, Rate

PERSISTENT = 2


def _properties(message_id: str) -> pika.BasicProperties:
    return pika.BasicProperties(
        message_id=message_id, delivery_mode=PERSISTENT, headers={"x-txmq-id": message_id}
    )


def pipelined_confirms(url: str, topic: str, count: int, body: bytes, window: int = 1500) -> Rate:
    """msg/s from the first publish to the last confirm, ``window`` publishes unconfirmed."""
    exchange = rabbitmq_settings(url).exchange
    ids = [uuid.uuid4().hex for _ in range(count)]
    state: dict[str, Any] = {"sent": 0, "confirmed": 0, "failed": 0, "rate": None}
    channel: Any = None
    clock = CpuClock()

    def fill() -> None:
        while state["sent"] < count and state["sent"] - state["confirmed"] < window:
            message_id = ids[state["sent"]]
            channel.basic_publish(exchange, topic, body, _properties(message_id), True)
            state["sent"] += 1

    def on_confirm(frame: Any) -> None:
        method = frame.method
        confirmed = method.delivery_tag - state["confirmed"] if method.multiple else 1
        state["confirmed"] += confirmed
        if isinstance(method, pika.spec.Basic.Nack):
            state["failed"] += confirmed
        if state["confirmed"] == count:
            state["rate"] = clock.rate(count)
            connection.close()
        else:
            fill()

    def on_confirm_mode(_frame: Any) -> None:
        nonlocal clock
        clock = CpuClock()
        fill()

    def on_channel(opened: Any) -> None:
        nonlocal channel
        channel = opened
        channel.confirm_delivery(ack_nack_callback=on_confirm, callback=on_confirm_mode)

    connection = pika.SelectConnection(
        pika_parameters(url),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, _reason: c.ioloop.stop(),
    )
    connection.ioloop.start()
    connection.ioloop.close()
    assert state["failed"] == 0, f"{state['failed']} messages nacked"
    rate: Rate = state["rate"]
    return rate


def confirm_each(url: str, topic: str, count: int, body: bytes) -> Rate:
    """msg/s publishing one message at a time, each waiting for its confirm."""
    exchange = rabbitmq_settings(url).exchange
    connection = pika.BlockingConnection(pika_parameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        clock = CpuClock()
        for _ in range(count):
            channel.basic_publish(exchange, topic, body, _properties(uuid.uuid4().hex), True)
        return clock.rate(count)
    finally:
        connection.close()


def manual_ack_consumer(url: str, queue: str, count: int) -> Rate:
    """msg/s of a bare consumer of ``queue`` (already holding ``count`` messages): manual
    ack, prefetch 1000, one multiple-ack every 100 messages; timed from the first delivery."""
    connection = pika.BlockingConnection(pika_parameters(url))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1000)
        clock = CpuClock()
        deliveries = channel.consume(queue, auto_ack=False)
        for received, (method, _properties, _body) in enumerate(deliveries, start=1):
            if received == 1:
                clock = CpuClock()
            if received % 100 == 0 or received == count:
                channel.basic_ack(method.delivery_tag, multiple=True)
            if received == count:
                break
        rate = clock.rate(count)
        channel.cancel()
        return rate
    finally:
        connection.close()


def delete_queues(url: str, queues: list[str]) -> None:
    """Remove the benchmark's own queues from the shared broker."""
    connection = pika.BlockingConnection(pika_parameters(url))
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
    finally:
        connection.close()
