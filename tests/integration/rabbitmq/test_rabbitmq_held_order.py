"""Held messages of a topic's first consumer group stay ahead of live ones (per-key order).

``declare`` moves the messages held in ``<exchange>.unroutable`` into the new work queues
before binding them: a message published while the group declares lands behind them. The
tests publish such a message from inside the declaration, right before or right after the
work queue is bound, so the race is hit every time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from txmq import Message, Topology, TxmqError
from txmq.adapters.base import Publisher
from txmq.adapters.rabbitmq.adapter import RabbitMQAdapter

pytestmark = pytest.mark.broker


@pytest.fixture(params=["classic", "quorum"])
def private(
    request: pytest.FixtureRequest,
    connect_with: Callable[..., RabbitMQAdapter],
    raw_channel: Any,
    unique: Callable[[str], str],
) -> Iterator[RabbitMQAdapter]:
    """An adapter on an exchange of its own, so that only this test's messages are held."""
    exchange = unique("order")
    adapter = connect_with(exchange=exchange, queue_type=request.param)
    yield adapter
    adapter.close()
    raw_channel.queue_delete(f"{exchange}.unroutable")
    raw_channel.exchange_delete(f"{exchange}.unroutable")
    raw_channel.exchange_delete(exchange)


def publish(publisher: Publisher, topic: str, *bodies: bytes) -> None:
    outcomes = publisher.publish([Message(topic, body, key="k") for body in bodies])
    assert all(outcome.ok for outcome in outcomes)


def contents(raw_channel: Any, queue: str) -> list[bytes]:
    """Every message of ``queue``, head first (taken off the queue)."""
    bodies: list[bytes] = []
    while True:
        method, _properties, body = raw_channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def publish_while_binding(
    monkeypatch: pytest.MonkeyPatch, publisher: Publisher, topology: Topology, *, after: bool
) -> None:
    """Publish ``b"live"`` to the topic as ``topology``'s work queue is bound to the
    exchange: just before the bind (``after=False``) or just after it."""
    original = BlockingChannel.queue_bind
    done: list[bool] = []

    def queue_bind(channel: BlockingChannel, queue: str, exchange: str, **kwargs: Any) -> Any:
        ours = queue == topology.work_queue and not done
        if ours and not after:
            done.append(True)
            publish(publisher, topology.topic, b"live")
        result = original(channel, queue, exchange, **kwargs)
        if ours and after:
            done.append(True)
            publish(publisher, topology.topic, b"live")
        return result

    monkeypatch.setattr(BlockingChannel, "queue_bind", queue_bind)


@pytest.mark.parametrize("after", [True, False], ids=["live-after-bind", "live-before-bind"])
def test_a_message_published_while_the_first_group_declares_stays_behind_the_held_ones(
    private: RabbitMQAdapter,
    raw_channel: Any,
    unique: Callable[[str], str],
    cleanup: list[str],
    monkeypatch: pytest.MonkeyPatch,
    after: bool,
) -> None:
    topic = unique("t")
    groups = [Topology(unique("g1"), topic), Topology(unique("g2"), topic)]
    for topology in groups:
        cleanup.extend([topology.work_queue, topology.dead_letter_queue])
    with private.publisher() as publisher:
        publish(publisher, topic, b"0", b"1", b"2")
        # After the last bind every group has the live message; before the first, none.
        binding = groups[-1] if after else groups[0]
        publish_while_binding(monkeypatch, publisher, binding, after=after)
        private.declare(groups)
        monkeypatch.undo()
        publish(publisher, topic, b"3")
    for topology in groups:
        assert contents(raw_channel, topology.work_queue) == [b"0", b"1", b"2", b"live", b"3"]
    assert contents(raw_channel, f"{private.settings.exchange}.unroutable") == []


def test_a_later_group_does_not_take_what_an_earlier_group_left_held(
    private: RabbitMQAdapter, raw_channel: Any, unique: Callable[[str], str], cleanup: list[str]
) -> None:
    topic = unique("t")
    first, other = Topology(unique("g1"), topic), Topology(unique("g2"), unique("other"))
    cleanup.extend(
        [first.work_queue, first.dead_letter_queue, other.work_queue, other.dead_letter_queue]
    )
    with private.publisher() as publisher:
        publish(publisher, topic, b"0")
        publish(publisher, other.topic, b"x")
        private.declare([first])
        publish(publisher, topic, b"1")
    assert contents(raw_channel, first.work_queue) == [b"0", b"1"]
    private.declare([other])
    assert contents(raw_channel, other.work_queue) == [b"x"]


def test_a_crash_between_moving_and_acknowledging_duplicates_and_keeps_order(
    private: RabbitMQAdapter,
    raw_channel: Any,
    unique: Callable[[str], str],
    cleanup: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topology = Topology(unique("g"), unique("t"))
    cleanup.extend([topology.work_queue, topology.dead_letter_queue])
    original = BlockingChannel.basic_ack
    acks: list[int] = []

    def basic_ack(channel: BlockingChannel, *args: Any, **kwargs: Any) -> Any:
        acks.append(1)
        if len(acks) == 2:  # "1" is in the work queue, not yet acknowledged: the crash
            raise pika.exceptions.AMQPConnectionError("crash")
        return original(channel, *args, **kwargs)

    with private.publisher() as publisher:
        publish(publisher, topology.topic, b"0", b"1", b"2")
        monkeypatch.setattr(BlockingChannel, "basic_ack", basic_ack)
        with pytest.raises(TxmqError):
            private.declare([topology])
        monkeypatch.undo()
        private.declare([topology])  # the restart
        publish(publisher, topology.topic, b"3")
    got = contents(raw_channel, topology.work_queue)
    assert got == [b"0", b"1", b"1", b"2", b"3"]  # a duplicate, nothing lost or reordered


def test_two_consumers_of_a_new_group_starting_at_once_keep_the_held_order(
    private: RabbitMQAdapter,
    connect_with: Callable[..., RabbitMQAdapter],
    raw_channel: Any,
    unique: Callable[[str], str],
    cleanup: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second declaration starts while the first holds held message "0" unpublished:
    it must wait rather than take "1" and "2" and forward them first."""
    topology = Topology(unique("g"), unique("t"))
    cleanup.extend([topology.work_queue, topology.dead_letter_queue])
    second = connect_with(
        exchange=private.settings.exchange, queue_type=private.settings.queue_type
    )
    first_thread = threading.current_thread()
    second_waits, second_done = threading.Event(), threading.Event()
    started: list[threading.Thread] = []

    def declare_second() -> None:
        second.declare([topology])
        second_done.set()

    original_publish = BlockingChannel.basic_publish

    def basic_publish(channel: BlockingChannel, exchange: str, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is first_thread and not started:
            started.append(threading.Thread(target=declare_second, daemon=True))
            started[0].start()
            assert wait_for_either(second_waits, second_done, timeout=60.0)
        return original_publish(channel, exchange, *args, **kwargs)

    original_sleep = BlockingConnection.sleep

    def sleep(connection: BlockingConnection, duration: float) -> None:
        if threading.current_thread() is not first_thread:
            second_waits.set()
        original_sleep(connection, duration)

    with private.publisher() as publisher:
        publish(publisher, topology.topic, b"0", b"1", b"2")
        monkeypatch.setattr(BlockingChannel, "basic_publish", basic_publish)
        monkeypatch.setattr(BlockingConnection, "sleep", sleep)
        private.declare([topology])
        started[0].join(timeout=60.0)
        assert second_done.is_set()
        monkeypatch.undo()
        publish(publisher, topology.topic, b"3")
    second.close()
    assert contents(raw_channel, topology.work_queue) == [b"0", b"1", b"2", b"3"]


def wait_for_either(a: threading.Event, b: threading.Event, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if a.wait(0.05) or b.is_set():
            return True
    return False


def test_interleaved_held_messages_of_other_topics_stay_held_in_their_order(
    private: RabbitMQAdapter, raw_channel: Any, unique: Callable[[str], str], cleanup: list[str]
) -> None:
    # The held messages are streamed to the re-route, not fetched one by one: a topic's
    # messages among many of other topics are moved, the others given back in place.
    topology, other = Topology(unique("g"), unique("t")), unique("other")
    cleanup.extend([topology.work_queue, topology.dead_letter_queue])
    with private.publisher() as publisher:
        for n in range(300):
            publish(publisher, topology.topic if n % 3 == 0 else other, str(n).encode())
        private.declare([topology])
    assert contents(raw_channel, topology.work_queue) == [
        str(n).encode() for n in range(300) if n % 3 == 0
    ]
    kept = contents(raw_channel, f"{private.settings.exchange}.unroutable")
    others = [str(n).encode() for n in range(300) if n % 3]
    if private.settings.queue_type == "classic":
        assert kept == others
    else:
        # A quorum queue does not put a message given back where it was: the other
        # topics' held messages are all kept, but reordered (as they were before the
        # streaming re-route; known, not fixed yet).
        assert sorted(kept) == sorted(others)
