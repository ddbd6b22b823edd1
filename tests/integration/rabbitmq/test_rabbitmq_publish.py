"""RabbitMQ publisher against a real broker: confirms, returns, nacks, timeouts, lost links."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import pytest

import txmq
from txmq import (
    BrokerUnavailable,
    Message,
    MessageTooLarge,
    PublishError,
    Topology,
    TopologyError,
    unroutable,
)
from txmq.adapters.rabbitmq.adapter import RabbitMQAdapter
from txmq.adapters.rabbitmq.wire import encode_headers

pytestmark = pytest.mark.broker


def test_batch_is_confirmed_and_lands_in_the_bound_queue(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology], depth: Callable[[str], int]
) -> None:
    topology = declared()
    messages = [Message(topology.topic, b"x" * 200) for _ in range(1000)]
    with adapter.publisher() as publisher:
        outcomes = publisher.publish(messages)
    assert [o.message_id for o in outcomes] == [m.id for m in messages]
    assert all(o.ok for o in outcomes)
    assert depth(topology.work_queue) == 1000


def test_unroutable_message_is_held_and_routable_neighbours_succeed(
    adapter: RabbitMQAdapter,
    declared: Callable[..., Topology],
    unique: Callable[[str], str],
    depth: Callable[[str], int],
) -> None:
    """No queue bound for its topic: confirmed and held in <exchange>.unroutable, like Kafka
    keeping it in its topic; declaring a queue for the topic routes it there."""
    topology = declared()
    nowhere = unique("unbound")
    messages = [
        Message(topology.topic, b"1"),
        Message(nowhere, b"2"),
        Message(topology.topic, b"3"),
    ]
    with adapter.publisher() as publisher:
        outcomes = publisher.publish(messages)
    assert [o.ok for o in outcomes] == [True, True, True]
    assert messages[1].id in [m.id for m in unroutable.held(adapter, limit=10_000)]
    late = declared(topic=nowhere)
    assert depth(late.work_queue) == 1
    assert messages[1].id not in [m.id for m in unroutable.held(adapter, limit=10_000)]


def test_unroutable_message_fails_with_unroutable_return(
    connect_with: Callable[..., RabbitMQAdapter], unique: Callable[[str], str], raw_channel: Any
) -> None:
    """For an exchange declared without the alternate exchange (an older txmq's)."""
    exchange = unique("returning")
    broker = connect_with(exchange=exchange, unroutable="return")
    nowhere = unique("unbound")
    try:
        with broker.publisher() as publisher:
            (outcome,) = publisher.publish([Message(nowhere, b"2")])
    finally:
        broker.close()
        raw_channel.exchange_delete(exchange)
    assert isinstance(outcome.error, PublishError)
    assert f"no queue bound for topic {nowhere!r}" in str(outcome.error)


def test_an_exchange_declared_by_an_older_txmq_is_a_clear_error(
    connect_with: Callable[..., RabbitMQAdapter], unique: Callable[[str], str], raw_channel: Any
) -> None:
    exchange = unique("older")
    raw_channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    broker = connect_with(exchange=exchange)
    try:
        with pytest.raises(TopologyError, match=r"unroutable=return"), broker.publisher() as p:
            p.connect()
        with pytest.raises(TopologyError, match=r"older txmq"):
            broker.declare([])
    finally:
        broker.close()
        raw_channel.exchange_delete(exchange)


def test_send_to_missing_queue_fails(adapter: RabbitMQAdapter, unique: Callable[[str], str]):
    queue = unique("missing")
    with adapter.publisher() as publisher:
        (outcome,) = publisher.send_to_queue(queue, [Message("t", b"")])
    assert isinstance(outcome.error, PublishError)
    assert f"no queue named {queue!r}" in str(outcome.error)


def test_send_to_queue_bypasses_the_exchange(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology], depth: Callable[[str], int]
) -> None:
    topology = declared()
    with adapter.publisher() as publisher:
        outcomes = publisher.send_to_queue(
            topology.dead_letter_queue, [Message(topology.topic, b"") for _ in range(3)]
        )
    assert all(o.ok for o in outcomes)
    assert depth(topology.dead_letter_queue) == 3
    assert depth(topology.work_queue) == 0


def test_nacked_messages_fail(
    adapter: RabbitMQAdapter,
    raw_channel: Any,
    unique: Callable[[str], str],
    cleanup: list[str],
) -> None:
    # A full queue with reject-publish makes the broker nack what it cannot take.
    topic, queue = unique("nack-topic"), unique("nack-queue")
    cleanup.append(queue)
    raw_channel.queue_declare(
        queue, durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    raw_channel.queue_bind(queue, adapter.settings.exchange, routing_key=topic)
    with adapter.publisher() as publisher:
        outcomes = publisher.publish([Message(topic, b"") for _ in range(3)])
    assert [o.ok for o in outcomes] == [True, False, False]
    assert "rejected (nack)" in str(outcomes[1].error)


def test_a_nack_makes_the_next_publish_use_a_new_channel(
    adapter: RabbitMQAdapter,
    raw_channel: Any,
    unique: Callable[[str], str],
    cleanup: list[str],
) -> None:
    """A channel nacked while a quorum queue's leader moved to another node went on nacking
    every publish on RabbitMQ 3.10 (tests/cluster shows it on a real cluster); after a nack
    the publisher opens a new channel, and what it publishes then is confirmed."""
    topic, queue = unique("nack-topic"), unique("nack-queue")
    cleanup.append(queue)
    raw_channel.queue_declare(
        queue, durable=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    raw_channel.queue_bind(queue, adapter.settings.exchange, routing_key=topic)
    with adapter.publisher() as publisher:
        assert not publisher.publish([Message(topic, b"")])[0].ok
        nacked_link = publisher._link  # type: ignore[attr-defined]
        raw_channel.queue_purge(queue)
        raw_channel.queue_delete(queue)
        assert publisher.publish([Message(unique("unbound"), b"")])[0].ok
        assert publisher._link is not nacked_link  # type: ignore[attr-defined]


def test_oversized_batch_is_refused_before_anything_is_sent(
    connect_with: Callable[..., RabbitMQAdapter],
    declared: Callable[..., Topology],
    depth: Callable[[str], int],
) -> None:
    small = connect_with(max_body_bytes="1000")
    topology = declared(broker=small)
    messages = [Message(topology.topic, b"ok"), Message(topology.topic, b"x" * 1001)]
    with small.publisher() as publisher, pytest.raises(MessageTooLarge):
        publisher.publish(messages)
    with small.publisher() as publisher, pytest.raises(MessageTooLarge):
        publisher.send_to_queue(topology.work_queue, messages)
    assert depth(topology.work_queue) == 0


def test_unconfirmed_messages_time_out_and_late_confirms_are_ignored(
    proxied_adapter: RabbitMQAdapter, declared: Callable[..., Topology], proxy: Any
) -> None:
    topology = declared(broker=proxied_adapter)
    connections_before = proxy.connections
    with proxied_adapter.publisher() as publisher:
        assert publisher.publish([Message(topology.topic, b"warm-up")])[0].ok
        proxy.hold_downstream()
        started = time.monotonic()
        outcomes = publisher.publish([Message(topology.topic, b"") for _ in range(5)], timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 2.0
        assert all("not confirmed by RabbitMQ within 0.5 s" in str(o.error) for o in outcomes)
        proxy.resume_downstream()
        # The same connection carries on; the held confirms arrive and change nothing.
        assert publisher.publish([Message(topology.topic, b"after")])[0].ok
    assert proxy.connections == connections_before + 1
    assert all(not o.ok for o in outcomes)


def test_lost_connection_mid_batch_raises_and_next_publish_reconnects(
    proxied_adapter: RabbitMQAdapter,
    declared: Callable[..., Topology],
    proxy: Any,
    wait_until: Callable[..., None],
) -> None:
    topology = declared(broker=proxied_adapter)
    connections_before = proxy.connections
    with proxied_adapter.publisher() as publisher, ThreadPoolExecutor(1) as pool:
        assert publisher.publish([Message(topology.topic, b"warm-up")])[0].ok
        proxy.hold_downstream()
        sent_before = proxy.upstream_bytes
        batch = [Message(topology.topic, b"x" * 100) for _ in range(200)]
        pending = pool.submit(publisher.publish, batch, timeout=30)
        wait_until(lambda: proxy.upstream_bytes >= sent_before + 200 * 100)
        started = time.monotonic()
        proxy.sever()
        with pytest.raises(BrokerUnavailable, match="outcome is unknown"):
            pending.result(timeout=30)
        assert time.monotonic() - started < 10.0  # at the loss, not at the 30 s timeout
        proxy.resume_downstream()
        assert publisher.publish([Message(topology.topic, b"again")])[0].ok
    assert proxy.connections == connections_before + 2


def test_publisher_reconnects_after_its_idle_connection_was_cut(
    proxied_adapter: RabbitMQAdapter,
    declared: Callable[..., Topology],
    proxy: Any,
) -> None:
    topology = declared(broker=proxied_adapter)
    connections_before = proxy.connections
    with proxied_adapter.publisher() as publisher:
        assert publisher.publish([Message(topology.topic, b"1")])[0].ok
        proxy.sever()
        # A batch racing the IO thread's discovery of the cut may have gone into the dead
        # socket: its outcome is unknown, which must be said, never reported as success.
        try:
            racing = publisher.publish([Message(topology.topic, b"2")])
        except BrokerUnavailable:
            pass
        else:
            assert racing[0].ok
        assert publisher.publish([Message(topology.topic, b"3")])[0].ok
    assert proxy.connections == connections_before + 2


def test_publisher_threads_end_with_their_connections(
    proxied_adapter: RabbitMQAdapter,
    declared: Callable[..., Topology],
    proxy: Any,
    wait_until: Callable[..., None],
) -> None:
    def io_threads() -> int:
        return sum(t.name == "txmq publisher io" for t in threading.enumerate())

    topology = declared(broker=proxied_adapter)
    before = io_threads()
    publisher = proxied_adapter.publisher()
    assert publisher.publish([Message(topology.topic, b"")])[0].ok
    assert io_threads() == before + 1
    proxy.sever()
    wait_until(lambda: io_threads() == before)  # the lost link's thread ends by itself
    assert publisher.publish([Message(topology.topic, b"")])[0].ok
    publisher.close()
    assert io_threads() == before


def test_closed_publisher_refuses_and_close_is_idempotent(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology]
) -> None:
    topology = declared()
    publisher = adapter.publisher()
    assert publisher.publish([Message(topology.topic, b"")])[0].ok
    publisher.close()
    publisher.close()
    with pytest.raises(txmq.BrokerError, match="closed"):
        publisher.publish([Message(topology.topic, b"")])


def test_empty_batch_needs_no_broker() -> None:
    unreachable = txmq.connect("rabbitmq://u:p@127.0.0.1:1/", check=False)
    with unreachable.publisher() as publisher:
        assert publisher.publish([]) == []


def test_unreachable_broker_fails_fast_without_password(unique: Callable[[str], str]) -> None:
    url = "rabbitmq://app:hunter2-secret@127.0.0.1:1/?connect_timeout=1"
    broker = txmq.connect(url, check=False)
    for attempt in (broker.ping, lambda: broker.publisher().publish([Message("t", b"")])):
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as caught:
            attempt()
        assert time.monotonic() - started < 2.0
        assert_no_secret(caught.value, "hunter2")
    with pytest.raises(BrokerUnavailable) as caught:
        broker.subscribe(unique("g"), ["q"])
    assert_no_secret(caught.value, "hunter2")


def test_wrong_password_is_unavailable_without_password(rabbitmq_url: str) -> None:
    settings = txmq.parse_broker_url(rabbitmq_url)
    assert isinstance(settings, txmq.RabbitMQSettings)
    url = f"rabbitmq://{settings.username}:not-the-pw-42@{settings.host}:{settings.port}/"
    with pytest.raises(BrokerUnavailable) as caught:
        txmq.connect(url)
    assert_no_secret(caught.value, "not-the-pw-42")
    assert "ACCESS_REFUSED" in str(caught.value) or "Authentication" in str(caught.value)


def assert_no_secret(exc: BaseException, secret: str) -> None:
    """Neither the error nor anything in its cause chain mentions ``secret``."""
    seen: BaseException | None = exc
    while seen is not None:
        assert secret not in str(seen)
        assert secret not in repr(seen)
        seen = seen.__cause__ or seen.__context__


def test_raw_pika_publish_with_txmq_headers_is_read_back(
    adapter: RabbitMQAdapter,
    declared: Callable[..., Topology],
    raw_channel: Any,
    depth: Callable[[str], int],
    wait_until: Callable[..., None],
) -> None:
    # Another producer speaking the wire format (e.g. a relay in another language).
    topology = declared()
    raw_channel.basic_publish(
        adapter.settings.exchange,
        topology.topic,
        b"payload",
        pika.BasicProperties(
            message_id="id-from-elsewhere", headers={"x-txmq-key": "k", "app": "v"}
        ),
    )
    wait_until(lambda: depth(topology.work_queue) == 1)
    (delivery,) = adapter.read_queue(topology.work_queue, limit=5, timeout=5)
    assert delivery.message == Message(
        topology.topic, b"payload", key="k", headers={"app": "v"}, id="id-from-elsewhere"
    )


def test_a_header_name_amqp_cannot_carry_fails_that_message_alone(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology], depth: Callable[[str], int]
) -> None:
    """AMQP's header names are short strings (at most 255 bytes): a longer one is refused
    for that message, and its neighbours and the connection are unaffected. It used to fail
    the whole publish as a lost connection, so a relay tried the batch again for ever."""
    topology = declared()
    messages = [
        Message(topology.topic, b"1"),
        Message(topology.topic, b"2", headers={"h" * 256: "v"}),
        Message(topology.topic, b"3", headers={"é" * 128: "v"}),  # 256 bytes of UTF-8
        Message(topology.topic, b"4", headers={"h" * 255: "v"}),
        # Headers within max_body_bytes but more than one frame (128 KiB) can carry.
        Message(topology.topic, b"5", headers={"big": "v" * 200_000}),
    ]
    with adapter.publisher() as publisher:
        outcomes = publisher.publish(messages)
        assert [o.ok for o in outcomes] == [True, False, False, True, False]
        refused = [outcomes[n].error for n in (1, 2, 4)]
        assert all(isinstance(error, txmq.PublishRefused) for error in refused)
        assert "at most 255" in str(refused[0])
        assert "more than one frame carries" in str(refused[2])
        assert publisher.publish([Message(topology.topic, b"6")])[0].ok
    assert depth(topology.work_queue) == 3


def test_what_the_publisher_writes_is_read_back_whole_across_frames(
    adapter: RabbitMQAdapter, declared: Callable[..., Topology], raw_channel: Any
) -> None:
    """The publisher encodes its frames itself: a body longer than a frame (128 KiB at the
    default frame_max), an empty one and non-ASCII headers arrive as they were sent,
    persistent, and decode to the messages sent."""
    topology = declared()
    messages = [
        Message(topology.topic, bytes(range(256)) * 1200, key="k", headers={"ä": "ö€"}),
        Message(topology.topic, b"", headers={}),
        Message(topology.topic, b"x" * (131072 - 8)),  # one full body frame by default
    ]
    with adapter.publisher() as publisher:
        assert all(o.ok for o in publisher.publish(messages))
    deliveries = adapter.read_queue(topology.work_queue, limit=5, timeout=5)
    assert [d.message for d in deliveries] == messages
    for sent in messages:
        method, properties, body = raw_channel.basic_get(topology.work_queue, auto_ack=True)
        assert method is not None
        assert body == sent.body
        assert properties.delivery_mode == 2
        assert properties.message_id == sent.id
        assert properties.headers == encode_headers(sent)
    assert raw_channel.basic_get(topology.work_queue, auto_ack=True)[0] is None
