"""txmq.wire: header parsing, Message <-> text headers, and decode-or-raw, without a broker."""

from __future__ import annotations

import pytest

from txmq.adapters import Topology, work_queue
from txmq.adapters.kafka.wire import encode_headers as kafka_encode_headers
from txmq.adapters.memory.adapter import InMemoryBroker
from txmq.errors import MessageDecodeError
from txmq.message import Message, restore_message
from txmq.wire import (
    Delivery,
    decode_or_raw,
    error_type,
    message_from_wire,
    parse_attempt,
    parse_timestamp,
    replay_generation,
    timestamp,
    wire_headers,
)


class NotFound(Exception):
    pass


# --- header values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "attempt"),
    [
        ({}, 1),
        ({"x-txmq-attempt": "4"}, 4),
        ({"x-txmq-attempt": "0"}, 1),
        ({"x-txmq-attempt": "x"}, 1),
    ],
)
def test_attempt_defaults_to_one_for_a_missing_or_unreadable_value(
    headers: dict[str, str], attempt: int
) -> None:
    assert parse_attempt(headers) == attempt


@pytest.mark.parametrize(
    ("headers", "generation"),
    [
        ({}, 0),
        ({"x-txmq-replay": "2"}, 2),
        ({"x-txmq-replay": "-1"}, 0),
        ({"x-txmq-replay": ""}, 0),
    ],
)
def test_replay_generation_defaults_to_zero(headers: dict[str, str], generation: int) -> None:
    assert replay_generation(headers) == generation


def test_timestamps_travel_as_millisecond_text() -> None:
    assert timestamp(12.34567) == "12.346"
    assert parse_timestamp(timestamp(12.34567)) == 12.346
    assert parse_timestamp(None) is None
    assert parse_timestamp("soon") is None


def test_error_type_names_the_module_except_for_builtins() -> None:
    assert error_type(ValueError("x")) == "ValueError"
    assert error_type(NotFound()) == f"{__name__}.NotFound"


# --- Message <-> text headers -----------------------------------------------------------


@pytest.mark.parametrize("key", [None, "k-1"])
def test_a_message_survives_its_wire_headers(key: str | None) -> None:
    message = Message("orders", b"\x00", key=key, headers={"x-txmq-attempt": "2", "a": "1"})
    decoded = message_from_wire(body=message.body, headers=wire_headers(message), topic="g.orders")
    assert decoded == message


def test_wire_headers_replace_stale_id_topic_and_key() -> None:
    message = Message(
        "t", b"", headers={"x-txmq-id": "old", "x-txmq-topic": "old", "x-txmq-key": "old"}
    )
    assert wire_headers(message) == {"x-txmq-id": message.id, "x-txmq-topic": "t"}


@pytest.mark.parametrize(
    "message",
    [
        Message("t", b"", key="k", headers={"a": "1", "x-txmq-attempt": "2"}),
        Message("t", b"", headers={"x-txmq-id": "old", "x-txmq-key": "old", "\u00e9": "\u00e9"}),
    ],
)
def test_kafka_record_headers_are_the_wire_headers_in_utf8(message: Message) -> None:
    expected = {name: value.encode() for name, value in wire_headers(message).items()}
    assert dict(kafka_encode_headers(message)) == expected
    assert len(kafka_encode_headers(message)) == len(expected)


def test_the_brokers_own_id_wins_and_its_key_fills_in() -> None:
    headers = {"x-txmq-id": "header-id"}
    decoded = message_from_wire(body=b"", headers=headers, topic="t", message_id="prop", key="rk")
    assert (decoded.id, decoded.topic, decoded.key) == ("prop", "t", "rk")
    with_key = message_from_wire(
        body=b"", headers={**headers, "x-txmq-key": "hk"}, topic="t", key="rk"
    )
    assert with_key.key == "hk"
    assert message_from_wire(body=b"", headers={**headers, "x-txmq-key": ""}, topic="t").key is None


@pytest.mark.parametrize(
    ("headers", "topic", "reason"),
    [
        ({}, "t", "no message id"),
        ({"x-txmq-id": ""}, "t", "no message id"),
        ({"x-txmq-id": "1"}, "bad topic!", "not a valid txmq message"),
        ({"x-txmq-id": "1", "x-txmq-topic": "bad topic!"}, "t", "not a valid txmq message"),
    ],
)
def test_what_is_not_a_txmq_message_raises_decode_error(
    headers: dict[str, str], topic: str, reason: str
) -> None:
    with pytest.raises(MessageDecodeError, match=reason):
        message_from_wire(body=b"", headers=headers, topic=topic)


# --- decode, or a raw delivery ----------------------------------------------------------


def test_a_decoded_delivery_carries_the_message_and_asks_for_no_raw_headers() -> None:
    message = Message("t", b"b", headers={"x-txmq-attempt": "2"})

    def no_raw_headers() -> dict[str, str]:
        raise AssertionError("raw headers are only made for an undecodable message")

    delivery = decode_or_raw(
        lambda: message,
        source="g.t",
        token=7,
        redelivered=True,
        raw_body=b"b",
        raw_headers=no_raw_headers,
    )
    assert (delivery.message, delivery.decode_error, delivery.raw_body) == (message, None, b"")
    assert (delivery.source, delivery.token, delivery.redelivered) == ("g.t", 7, True)
    assert delivery.attempt == 2


def test_an_undecodable_delivery_carries_the_error_and_what_arrived() -> None:
    error = MessageDecodeError("no id")

    def decode() -> Message:
        raise error

    delivery = decode_or_raw(
        decode,
        source="g.t",
        token=None,
        redelivered=False,
        raw_body=b"\xff",
        raw_headers=lambda: {"x-txmq-attempt": "3", "h": "v"},
    )
    assert delivery.message is None
    assert delivery.decode_error is error
    assert (delivery.raw_body, delivery.raw_headers) == (b"\xff", {"x-txmq-attempt": "3", "h": "v"})
    assert delivery.attempt == 3


def test_other_errors_are_not_taken_for_an_undecodable_message() -> None:
    def decode() -> Message:
        raise RuntimeError("a bug, not bad input")

    with pytest.raises(RuntimeError):
        decode_or_raw(
            decode, source="s", token=None, redelivered=False, raw_body=b"", raw_headers=dict
        )


def test_the_memory_broker_decodes_what_arrived_raw_like_the_brokers() -> None:
    broker = InMemoryBroker()
    broker.declare([Topology("g", "orders")])
    queue = work_queue("g", "orders")
    broker.inject_raw(queue, b"legacy", {"origin": "app"})
    broker.inject_raw(queue, b"txmq", {"x-txmq-id": "id-1", "x-txmq-topic": "orders"})
    with broker.subscribe("g", [queue]) as subscription:
        raw, decoded = subscription.poll(1.0)
    assert isinstance(raw, Delivery)
    assert raw.message is None
    assert isinstance(raw.decode_error, MessageDecodeError)
    assert (raw.raw_body, raw.raw_headers) == (b"legacy", {"origin": "app"})
    assert decoded.message == Message("orders", b"txmq", id="id-1")


# --- restoring from txmq's tables -------------------------------------------------------


def test_a_restored_message_equals_the_one_that_was_stored() -> None:
    message = Message("t", b"x", key="k", headers={"a": "1"})
    restored = restore_message(
        topic=message.topic,
        body=message.body,
        key=message.key,
        headers=dict(message.headers),
        id=message.id,
    )
    assert restored == message
    with pytest.raises(TypeError):
        restored.headers["a"] = "2"  # type: ignore[index]
