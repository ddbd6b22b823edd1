"""txmq's own encoding of a basic.publish is pika's, byte for byte."""

from __future__ import annotations

from collections.abc import Mapping

import pika
import pytest
from pika import frame, spec

from txmq.adapters.rabbitmq import frames
from txmq.adapters.rabbitmq.wire import PERSISTENT
from txmq.errors import PublishRefused

BODY_MAX = 131072 - frames.FRAME_OVERHEAD  # pika's default frame_max


def pika_frames(
    channel: int,
    exchange: str,
    routing_key: str,
    message_id: str,
    headers: Mapping[str, str],
    body: bytes,
    body_max: int,
) -> bytes:
    """What pika's basic_publish writes (Connection._send_message, spelled out)."""
    method = spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True)
    properties = pika.BasicProperties(
        message_id=message_id, delivery_mode=PERSISTENT, headers=dict(headers)
    )
    parts = [
        frame.Method(channel, method).marshal(),
        frame.Header(channel, len(body), properties).marshal(),
    ]
    parts += [
        frame.Body(channel, body[start : start + body_max]).marshal()
        for start in range(0, len(body), body_max)
    ]
    return b"".join(parts)


def ours(
    channel: int,
    exchange: str,
    routing_key: str,
    message_id: str,
    headers: Mapping[str, str],
    body: bytes,
    body_max: int,
) -> bytes:
    header = frames.content_header(message_id, headers, len(body))
    method = frames.publish_method(channel, exchange, routing_key)
    return frames.message_frames(method, channel, header, body, body_max)


CASES = {
    "relay-like": (1, "txmq", "orders.created", "0193-id", {"x-txmq-id": "0193-id"}, b"x" * 200),
    "default exchange": (1, "", "shop.orders.dlq", "id", {"a": "b", "c": ""}, b"{}"),
    "no headers, empty body": (2, "txmq", "t", "id", {}, b""),
    "non-ASCII": (1, "txmq", "t", "idé", {"ä" * 100: "ö€" * 1000, "k": "🙂"}, b"\x00\xff"),
    "longest names": (7, "e" * 255, "r" * 255, "i" * 255, {"h" * 255: "v"}, b"b"),
    "one full frame": (1, "txmq", "t", "id", {}, b"y" * BODY_MAX),
    "several frames": (1, "txmq", "t", "id", {}, bytes(range(256)) * 1200),
    "a frame and a byte": (65535, "txmq", "t", "id", {}, b"z" * (BODY_MAX + 1)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_publish_frames_are_pikas_byte_for_byte(case: tuple[object, ...]) -> None:
    channel, exchange, routing_key, message_id, headers, body = case
    arguments = (channel, exchange, routing_key, message_id, headers, body)
    assert ours(*arguments, BODY_MAX) == pika_frames(*arguments, BODY_MAX)  # type: ignore[arg-type]
    assert ours(*arguments, 4096) == pika_frames(*arguments, 4096)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("message_id", "headers", "what"),
    [
        ("i" * 256, {}, "the message id is 256 bytes"),
        ("é" * 128, {}, "the message id is 256 bytes"),
        ("id", {"h" * 256: "v"}, "header name 'hhhh"),
        ("id", {"ok": "v", "€" * 86: "v"}, "is 258 bytes"),
    ],
)
def test_what_amqp_cannot_carry_is_refused(
    message_id: str, headers: dict[str, str], what: str
) -> None:
    with pytest.raises(PublishRefused, match=what) as caught:
        frames.content_header(message_id, headers, 0)
    assert "at most 255" in str(caught.value)


def test_names_longer_than_a_short_string_are_refused() -> None:
    with pytest.raises(PublishRefused, match="routing key is 256 bytes"):
        frames.publish_method(1, "txmq", "r" * 256)
    with pytest.raises(PublishRefused, match="exchange name is 256 bytes"):
        frames.publish_method(1, "e" * 256, "r")


def test_pika_still_has_what_the_publisher_writes_through() -> None:
    """The publisher writes its frames with the connection's own output method and reads
    the negotiated body size it keeps; a pika release without them must fail here."""
    connection = pika.connection.Connection
    assert callable(connection._output_marshaled_frames)
    assert "_body_max_length" in connection.__init__.__code__.co_names
