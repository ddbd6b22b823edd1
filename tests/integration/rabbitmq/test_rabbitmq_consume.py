"""RabbitMQ subscription against a real broker: acks, redelivery, groups, order, retries."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pika
import pytest

from txmq import BrokerError, BrokerUnavailable, Delivery, Message, Topology, TopologyError
from txmq.adapters.base import Subscription
from txmq.adapters.rabbitmq.adapter import RabbitMQAdapter
from txmq.adapters.rabbitmq.subscription import RabbitMQSubscription
from txmq.testing import wait_for

pytestmark = pytest.mark.broker


def publish(adapter: RabbitMQAdapter, messages: list[Message]) -> None:
    with adapter.publisher() as publisher:
        for start in range(0, len(messages), 500):
            outcomes = publisher.publish(messages[start : start + 500])
            assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok][:3]


def drain(
    subscription: Subscription, count: int, *, ack: bool = True, timeout: float = 10.0
) -> list[Delivery]:
    """Poll until ``count`` deliveries arrived (acking them), or fail after ``timeout``."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count} deliveries"
        batch = subscription.poll(0.2, max_messages=count - len(got))
        if ack:
            subscription.ack(batch)
        got += batch
    return got


def test_publish_and_consume_2000_with_manual_ack(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology], depth: Callable[[str], int]
) -> None:
    topology = declared()
    messages = [Message(topology.topic, b"%d" % i, headers={"n": str(i)}) for i in range(2000)]
    publish(adapter, messages)
    with adapter.subscribe(
        topology.group, adapter.sources_for([topology]), prefetch=300
    ) as subscription:
        deliveries = drain(subscription, 2000)
        assert subscription.poll(0.3) == []
    assert [d.message for d in deliveries] == messages
    assert {d.source for d in deliveries} == {topology.work_queue}
    assert not any(d.redelivered for d in deliveries)
    assert depth(topology.work_queue) == 0


def test_poll_waits_for_the_first_message_then_returns(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology]
) -> None:
    topology = declared()
    with adapter.subscribe(topology.group, [topology.work_queue]) as subscription:
        started = time.monotonic()
        assert subscription.poll(0.3) == []
        assert 0.3 <= time.monotonic() - started < 2.0
        publish(adapter, [Message(topology.topic, b"")])
        started = time.monotonic()
        # Returns at the message, long before its timeout (with room for a loaded machine).
        assert len(subscription.poll(30.0)) == 1
        assert time.monotonic() - started < 10.0


def test_unacked_message_is_redelivered_after_close(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology]
) -> None:
    topology = declared()
    message = Message(topology.topic, b"once")
    publish(adapter, [message])
    with adapter.subscribe(topology.group, [topology.work_queue]) as first:
        (delivery,) = drain(first, 1, ack=False)
        assert not delivery.redelivered
    with adapter.subscribe(topology.group, [topology.work_queue]) as second:
        (again,) = drain(second, 1)
    assert again.message == message
    assert again.redelivered


def test_unacked_message_is_redelivered_when_the_socket_dies(
    adapter: RabbitMQAdapter,
    proxied_adapter: RabbitMQAdapter,
    declared: Callable[..., Topology],
    proxy: Any,
) -> None:
    topology = declared()
    message = Message(topology.topic, b"once")
    publish(adapter, [message])
    doomed = proxied_adapter.subscribe(topology.group, [topology.work_queue])
    drain(doomed, 1, ack=False)
    proxy.sever()
    with pytest.raises(BrokerUnavailable):
        doomed.poll(2.0)
    doomed.close()
    with adapter.subscribe(topology.group, [topology.work_queue]) as survivor:
        (again,) = drain(survivor, 1)
    assert again.message == message
    assert again.redelivered


def test_release_gives_messages_back_and_partial_ack_keeps_the_rest(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology], depth: Callable[[str], int]
) -> None:
    topology = declared()
    messages = [Message(topology.topic, b"%d" % i) for i in range(6)]
    publish(adapter, messages)
    with adapter.subscribe(topology.group, [topology.work_queue], prefetch=10) as subscription:
        deliveries = drain(subscription, 6, ack=False)
        # Not a contiguous prefix: acked one by one; the others stay with us.
        subscription.ack([deliveries[1], deliveries[4]])
        subscription.release([deliveries[0]])
        (released,) = drain(subscription, 1, ack=False)
        assert released.message == messages[0]
        assert released.redelivered
        subscription.ack([released])
        subscription.ack([deliveries[1]])  # already settled: ignored, channel stays open
    # deliveries 2, 3, 5 were never acked: back in the queue.
    assert depth(topology.work_queue) == 3
    with adapter.subscribe(topology.group, [topology.work_queue]) as subscription:
        rest = drain(subscription, 3)
    assert sorted(d.message.body for d in rest if d.message) == [b"2", b"3", b"5"]


def test_acks_do_not_wait_for_a_busy_io_thread_and_are_written_before_close(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology], depth: Callable[[str], int]
) -> None:
    topology = declared()
    publish(adapter, [Message(topology.topic, b"%d" % i) for i in range(50)])
    gate = threading.Event()
    with adapter.subscribe(topology.group, [topology.work_queue], prefetch=100) as subscription:
        deliveries = drain(subscription, 50, ack=False)
        # Holds the IO thread in one callback, as a long turn of its event loop would
        # (the bound only keeps a broken test from hanging).
        subscription._connection.add_callback_threadsafe(lambda: gate.wait(60))
        for delivery in deliveries:
            subscription.ack([delivery])  # returns at once: nothing waits for the IO thread
        gate.set()
    # Every ack handed over before close() was written before the connection closed.
    assert depth(topology.work_queue) == 0
    with adapter.subscribe(topology.group, [topology.work_queue]) as again:
        assert again.poll(1.0) == []


def test_acks_of_buffered_work_are_coalesced_and_written_without_another_call(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology]
) -> None:
    topology = declared()
    publish(adapter, [Message(topology.topic, b"%d" % i) for i in range(60)])
    with adapter.subscribe(topology.group, [topology.work_queue], prefetch=200) as subscription:
        assert isinstance(subscription, RabbitMQSubscription)
        written: list[tuple[int, bool]] = []  # (delivery tag, multiple), by the IO thread
        basic_ack = subscription._channel.basic_ack

        def spy(delivery_tag: int, multiple: bool) -> None:
            written.append((delivery_tag, multiple))
            basic_ack(delivery_tag=delivery_tag, multiple=multiple)

        subscription._channel.basic_ack = spy
        wait_for(lambda: len(subscription._buffer) == 60, 30, "60 deliveries buffered")
        acked = []
        for _ in range(50):  # one at a time, ten left in the buffer: work still to do
            (delivery,) = subscription.poll(1.0, max_messages=1)
            time.sleep(0.002)  # a handler's work, time for the IO thread to write an ack
            subscription.ack([delivery])
            acked.append(delivery.token)

        def all_written() -> bool:
            done = {tag for tag, multiple in written if not multiple}
            done |= {tag for top, multiple in written if multiple for tag in acked if tag <= top}
            return done >= set(acked)

        # Written by the IO thread's timer: nothing else is called on the subscription.
        wait_for(all_written, 30, "the 50 acks written")
        assert len(written) < 50, written  # coalesced into multiple-acks
        rest = subscription.poll(1.0, max_messages=10)
        assert len(rest) == 10


def test_members_of_one_group_share_messages(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology]
) -> None:
    topology = declared()
    messages = [Message(topology.topic, b"%d" % i) for i in range(200)]
    publish(adapter, messages)
    seen: dict[int, list[str]] = defaultdict(list)
    with (
        adapter.subscribe(topology.group, [topology.work_queue], prefetch=10) as one,
        adapter.subscribe(topology.group, [topology.work_queue], prefetch=10) as two,
    ):
        deadline = time.monotonic() + 15
        while len(seen[0]) + len(seen[1]) < 200:
            assert time.monotonic() < deadline
            for index, member in enumerate((one, two)):
                batch = member.poll(0.05, max_messages=10)
                member.ack(batch)
                seen[index] += [d.message.id for d in batch if d.message]
    assert seen[0]
    assert seen[1]
    assert sorted(seen[0] + seen[1]) == sorted(m.id for m in messages)


def test_each_group_gets_every_message(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology], unique: Callable[[str], str]
) -> None:
    topic = unique("shared-topic")
    billing = declared(topic=topic, group=unique("billing"))
    shipping = declared(topic=topic, group=unique("shipping"))
    messages = [Message(topic, b"%d" % i) for i in range(50)]
    publish(adapter, messages)
    for topology in (billing, shipping):
        with adapter.subscribe(topology.group, adapter.sources_for([topology])) as subscription:
            assert [d.message for d in drain(subscription, 50)] == messages


def test_messages_of_each_key_keep_their_order(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology]
) -> None:
    topology = declared()
    messages = [Message(topology.topic, b"%d" % i, key=f"k{i % 5}") for i in range(300)]
    publish(adapter, messages)
    with adapter.subscribe(topology.group, [topology.work_queue], prefetch=50) as subscription:
        deliveries = drain(subscription, 300)
    by_key: dict[str | None, list[bytes]] = defaultdict(list)
    for delivery in deliveries:
        assert delivery.message is not None
        by_key[delivery.message.key].append(delivery.message.body)
    for key, bodies in by_key.items():
        expected = [m.body for m in messages if m.key == key]
        assert bodies == expected


def test_retry_queue_dead_letters_back_to_the_work_queue_after_its_delay(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology]
) -> None:
    topology = declared(retry_delays=(1.0, 60.0))
    message = Message(topology.topic, b"retry me", key="k", headers={"x-txmq-attempt": "2"})
    with adapter.subscribe(topology.group, adapter.sources_for([topology])) as subscription:
        with adapter.publisher() as publisher:
            sent_at = time.monotonic()
            (outcome,) = publisher.send_to_queue(topology.retry_queues()[0], [message])
        assert outcome.ok
        (delivery,) = drain(subscription, 1, timeout=10)
        waited = time.monotonic() - sent_at
    assert 0.9 <= waited < 5.0
    assert delivery.source == topology.work_queue
    assert delivery.message == message  # topic, key, id and headers survive (x-death dropped)
    assert delivery.attempt == 2


def test_dead_letter_queue_send_read_and_purge(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology]
) -> None:
    topology = declared()
    messages = [Message(topology.topic, b"%d" % i) for i in range(5)]
    with adapter.publisher() as publisher:
        assert all(o.ok for o in publisher.send_to_queue(topology.dead_letter_queue, messages))
    first = adapter.read_queue(topology.dead_letter_queue, limit=3, timeout=5)
    assert [d.message for d in first] == messages[:3]
    assert all(d.source == topology.dead_letter_queue for d in first)
    again = adapter.read_queue(topology.dead_letter_queue, limit=10, timeout=5)
    assert [d.message for d in again] == messages  # reading took nothing away
    assert adapter.purge_queue(topology.dead_letter_queue) == 5
    assert adapter.read_queue(topology.dead_letter_queue, limit=10, timeout=1) == []


def test_dead_letter_queue_can_be_consumed(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology]
) -> None:
    topology = declared()
    message = Message(topology.topic, b"dead")
    with adapter.publisher() as publisher:
        publisher.send_to_queue(topology.dead_letter_queue, [message])
    sources = [*adapter.sources_for([topology]), topology.dead_letter_queue]
    with adapter.subscribe(topology.group, sources) as subscription:
        (delivery,) = drain(subscription, 1)
    assert delivery.source == topology.dead_letter_queue
    assert delivery.message == message


def test_undecodable_messages_are_delivered_with_their_error_and_the_stream_goes_on(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology], raw_channel: Any
) -> None:
    topology = declared()
    for body, properties in [
        (b"\x00no id", pika.BasicProperties(delivery_mode=2)),
        (b"\x00odd header", pika.BasicProperties(message_id="m-1", headers={"odd": [1, 2]})),
    ]:
        raw_channel.basic_publish(adapter.settings.exchange, topology.topic, body, properties)
    good = Message(topology.topic, b"fine")
    publish(adapter, [good])
    with adapter.subscribe(topology.group, [topology.work_queue]) as subscription:
        deliveries = drain(subscription, 3)
        assert subscription.poll(0.2) == []  # acked like any other delivery
    bad = {d.raw_body: d for d in deliveries if d.message is None}
    assert [d.message for d in deliveries if d.message] == [good]
    assert "no message id" in str(bad[b"\x00no id"].decode_error)
    odd = bad[b"\x00odd header"]
    assert "'odd' holds a list" in str(odd.decode_error)
    assert odd.raw_headers == {"odd": "[1, 2]"}


def test_subscribing_to_a_missing_queue_is_a_topology_error(
    adapter: RabbitMQAdapter, unique: Callable[[str], str]
) -> None:
    with pytest.raises(TopologyError, match="NOT_FOUND"):
        adapter.subscribe(unique("g"), [unique("missing")])
    with pytest.raises(TopologyError, match="NOT_FOUND"):
        adapter.read_queue(unique("missing"), limit=1, timeout=1)
    with pytest.raises(TopologyError, match="NOT_FOUND"):
        adapter.purge_queue(unique("missing"))


def test_deleting_a_consumed_queue_ends_the_subscription_loudly(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology], raw_channel: Any
) -> None:
    topology = declared()
    with adapter.subscribe(topology.group, [topology.work_queue]) as subscription:
        raw_channel.queue_delete(topology.work_queue)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="cancelled consuming from"):
            subscription.poll(30.0)
        assert time.monotonic() - started < 10.0  # at the cancel, not at the poll's timeout


def test_closed_subscription_refuses_and_close_is_idempotent(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology]
) -> None:
    topology = declared()
    subscription = adapter.subscribe(topology.group, [topology.work_queue])
    subscription.close()
    subscription.close()
    with pytest.raises(BrokerError, match="closed"):
        subscription.poll(0.1)
