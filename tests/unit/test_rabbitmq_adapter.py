"""The RabbitMQ adapter's parts that need no broker: wire format, ack grouping, settings."""

from __future__ import annotations

import datetime
import decimal
import importlib
import ssl
import sys

import pika
import pytest

from txmq.adapters.base import Topology
from txmq.adapters.rabbitmq.adapter import RabbitMQAdapter
from txmq.adapters.rabbitmq.connection import connection_parameters, describe
from txmq.adapters.rabbitmq.publisher import Batch, outgoing
from txmq.adapters.rabbitmq.settings import RabbitMQSettings
from txmq.adapters.rabbitmq.wire import (
    PERSISTENT,
    decode_delivery,
    decode_message,
    encode_headers,
    settlement_plan,
)
from txmq.adapters.registry import parse_broker_url
from txmq.errors import (
    ConfigurationError,
    InvalidURL,
    MessageDecodeError,
    MissingDependency,
    PublishError,
    PublishRefused,
)
from txmq.message import Message

URL = "rabbitmq://app:s3cr3t-pw@127.0.0.1:5672/prod?connect_timeout=2.5"


def settings(url: str = URL) -> RabbitMQSettings:
    parsed = parse_broker_url(url)
    assert isinstance(parsed, RabbitMQSettings)
    return parsed


def wire(message: Message) -> tuple[bytes, str, dict[str, str]]:
    """What a publisher puts on the wire: body, message_id property, headers."""
    return message.body, message.id, encode_headers(message)


# --- encoding -------------------------------------------------------------------------


def test_encode_adds_id_topic_and_key_headers() -> None:
    message = Message("orders.created", b"{}", key="customer-7", headers={"a": "1"})
    assert encode_headers(message) == {
        "a": "1",
        "x-txmq-id": message.id,
        "x-txmq-topic": "orders.created",
        "x-txmq-key": "customer-7",
    }


def test_encode_omits_key_header_without_key() -> None:
    assert "x-txmq-key" not in encode_headers(Message("t", b""))


def test_outgoing_is_persistent_with_message_id() -> None:
    message = Message("t", b"body", headers={"h": "v"})
    item = outgoing("txmq", "t", message)
    assert isinstance(item.header, bytes)
    properties = pika.BasicProperties()
    properties.decode(item.header[12:])  # class, weight and body size come first
    assert properties.delivery_mode == PERSISTENT
    assert properties.message_id == message.id
    assert properties.headers == encode_headers(message)
    assert (item.exchange, item.routing_key, item.body) == ("txmq", "t", b"body")


def test_a_message_amqp_cannot_carry_is_settled_refused_when_its_batch_is_made() -> None:
    fine, refused = Message("t", b""), Message("t", b"", headers={"h" * 256: "v"})
    batch = Batch([outgoing("txmq", "t", m) for m in (fine, refused)])
    assert (batch.remaining, batch.settled) == (1, [False, True])
    assert isinstance(batch.errors[1], PublishRefused)
    assert refused.id in str(batch.errors[1])
    alone = Batch([outgoing("txmq", "t", refused)])
    assert alone.done.is_set()


def test_a_batch_of_refused_messages_needs_no_broker() -> None:
    refused = Message("t", b"", headers={"h" * 256: "v"})
    unreachable = RabbitMQAdapter(settings("rabbitmq://127.0.0.1:1/?connect_timeout=0.2"))
    with unreachable.publisher() as publisher:
        (outcome,) = publisher.publish([refused])
    assert isinstance(outcome.error, PublishRefused)


# --- decoding -------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "k-1"])
def test_round_trip_gives_the_same_message(key: str | None) -> None:
    message = Message(
        "orders.created", b"\x00\xff", key=key, headers={"x-txmq-attempt": "2", "app": "x"}
    )
    body, message_id, headers = wire(message)
    assert decode_message(body, message_id, headers, "orders.created") == message


def test_topic_survives_dead_lettering_through_another_routing_key() -> None:
    message = Message("orders.created", b"")
    body, message_id, headers = wire(message)
    decoded = decode_message(body, message_id, headers, "billing.orders.created")
    assert decoded.topic == "orders.created"


def test_topic_falls_back_to_routing_key_and_id_to_header() -> None:
    decoded = decode_message(b"x", None, {"x-txmq-id": "abc"}, "orders.paid")
    assert (decoded.id, decoded.topic, decoded.key) == ("abc", "orders.paid", None)


def test_message_id_property_wins_over_header() -> None:
    assert decode_message(b"", "prop", {"x-txmq-id": "hdr"}, "t").id == "prop"


def test_broker_headers_are_dropped() -> None:
    message = Message("t", b"", headers={"x-request-id": "r"})
    body, message_id, headers = wire(message)
    broker_added = {
        "x-death": [{"count": 1, "queue": "g.t.retry.1", "reason": "expired"}],
        "x-first-death-queue": "g.t.retry.1",
        "x-last-death-reason": "expired",
        "x-delivery-count": 3,
    }
    decoded = decode_message(body, message_id, {**headers, **broker_added}, "g.t")
    assert decoded == message


def test_scalar_headers_become_text() -> None:
    stamp = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)
    headers = {
        "i": 7,
        "f": 1.5,
        "b": True,
        "d": decimal.Decimal("2.50"),
        "raw": "é".encode(),
        "when": stamp,
    }
    decoded = decode_message(b"", "id-1", headers, "t")
    assert dict(decoded.headers) == {
        "i": "7",
        "f": "1.5",
        "b": "true",
        "d": "2.50",
        "raw": "é",
        "when": stamp.isoformat(),
    }


@pytest.mark.parametrize(
    ("message_id", "headers", "routing_key", "reason"),
    [
        (None, {}, "t", "no message id"),
        ("", {"x-txmq-id": ""}, "t", "no message id"),
        ("id", {"nested": {"a": 1}}, "t", "'nested' holds a dict"),
        ("id", {"list": [1]}, "t", "'list' holds a list"),
        ("id", {"bad": b"\xff\xfe"}, "t", "'bad' holds a bytes"),
        ("id", {"void": None}, "t", "'void' holds a NoneType"),
        ("id", {}, "not a valid topic!", "not a valid txmq message"),
    ],
)
def test_undecodable_messages_raise_decode_error(
    message_id: str | None, headers: dict[str, object], routing_key: str, reason: str
) -> None:
    with pytest.raises(MessageDecodeError, match=reason):
        decode_message(b"body", message_id, headers, routing_key)


def test_undecodable_delivery_keeps_raw_data() -> None:
    delivery = decode_delivery(
        source="g.t",
        token=9,
        redelivered=True,
        body=b"\x01raw",
        message_id=None,
        headers={"n": 5, "x": [1]},
        routing_key="t",
    )
    assert delivery.message is None
    assert isinstance(delivery.decode_error, MessageDecodeError)
    assert delivery.raw_body == b"\x01raw"
    assert delivery.raw_headers == {"n": "5", "x": "[1]"}
    assert (delivery.source, delivery.token, delivery.redelivered) == ("g.t", 9, True)


def test_decoded_delivery_has_message_and_no_raw_copy() -> None:
    message = Message("t", b"b", headers={"x-txmq-attempt": "3"})
    body, message_id, headers = wire(message)
    delivery = decode_delivery(
        source="g.t",
        token=1,
        redelivered=False,
        body=body,
        message_id=message_id,
        headers=headers,
        routing_key="t",
    )
    assert delivery.message == message
    assert delivery.decode_error is None
    assert delivery.attempt == 3
    assert delivery.raw_body == b""


# --- ack grouping ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outstanding", "tags", "plan"),
    [
        ([1, 2, 3, 4], [1, 2, 3, 4], [(4, True)]),
        ([1, 2, 3, 4], [3, 1, 2], [(3, True)]),
        ([5, 7, 9], [5, 7], [(7, True)]),
        ([1, 2, 3], [1], [(1, False)]),
        ([1, 2, 3], [2, 3], [(2, False), (3, False)]),
        ([1, 2, 3, 5, 6], [1, 2, 6], [(2, True), (6, False)]),
        ([1, 2, 3], [1, 3], [(1, False), (3, False)]),
        ([1, 2], [2, 2, 1], [(2, True)]),
    ],
)
def test_settlement_plan(outstanding: list[int], tags: list[int], plan: list[tuple[int, bool]]):
    assert settlement_plan(outstanding, tags) == plan


# --- publish batches ------------------------------------------------------------------


def batch_of(count: int) -> Batch:
    return Batch([outgoing("txmq", "t", Message("t", b"")) for _ in range(count)])


def test_batch_completes_when_every_message_is_settled() -> None:
    batch = batch_of(3)
    batch.settle(0, None)
    batch.settle(2, PublishError("nack"))
    assert not batch.done.is_set()
    batch.settle(1, None)
    assert batch.done.is_set()
    assert [o.ok for o in batch.outcomes()] == [True, True, False]


def test_abandoned_batch_fails_only_unsettled_messages_and_ignores_late_confirms() -> None:
    batch = batch_of(3)
    batch.settle(1, None)
    batch.abandon(1.5)
    batch.settle(0, None)  # a confirm after the caller gave up changes nothing
    outcomes = batch.outcomes()
    assert outcomes[1].ok
    for outcome in (outcomes[0], outcomes[2]):
        assert isinstance(outcome.error, PublishError)
        assert "not confirmed by RabbitMQ within 1.5 s" in str(outcome.error)


def test_lost_connection_marks_batch_unknown_unless_already_complete() -> None:
    batch = batch_of(2)
    batch.settle(0, None)
    batch.connection_lost("reset")
    assert batch.done.is_set()
    assert batch.lost == "reset"

    complete = batch_of(1)
    complete.settle(0, None)
    complete.connection_lost("reset")
    assert complete.lost is None
    assert complete.outcomes()[0].ok


# --- settings and errors --------------------------------------------------------------


def test_connection_parameters_bound_every_wait_by_connect_timeout() -> None:
    params = connection_parameters(settings(), name="txmq test")
    assert (params.host, params.port, params.virtual_host) == ("127.0.0.1", 5672, "prod")
    assert params.connection_attempts == 1
    assert params.socket_timeout == params.stack_timeout == 2.5
    assert params.blocked_connection_timeout == 2.5
    assert params.heartbeat == 60
    assert params.ssl_options is None
    assert params.client_properties == {"connection_name": "txmq test"}
    assert "s3cr3t" not in repr(params)


def test_several_hosts_are_nodes_tried_in_order() -> None:
    parsed = settings("rabbitmq://app:s3cr3t-pw@n1:5701, n2 ,n3:5703/prod?queue_type=quorum")
    assert parsed.nodes == (("n1", 5701), ("n2", 5672), ("n3", 5703))
    assert (parsed.host, parsed.port, parsed.virtual_host) == ("n1", 5701, "prod")
    assert (parsed.username, parsed.password, parsed.queue_type) == ("app", "s3cr3t-pw", "quorum")
    assert parsed.redacted_url() == "rabbitmq://app:***@n1:5701,n2:5672,n3:5703/prod"
    params = [connection_parameters(parsed, name="t", node=node) for node in range(3)]
    assert [(p.host, p.port, p.virtual_host) for p in params] == [
        ("n1", 5701, "prod"),
        ("n2", 5672, "prod"),
        ("n3", 5703, "prod"),
    ]
    assert settings("amqps://u:p@a,b:1/").nodes == (("a", 5671), ("b", 1))
    assert settings(URL).failover == ()


@pytest.mark.parametrize(
    "url", ["rabbitmq://u:hunter2@n1:5672,/", "rabbitmq://u:hunter2@n1,n2:notaport/"]
)
def test_a_bad_further_host_is_an_invalid_url_without_the_password(url: str) -> None:
    with pytest.raises(InvalidURL) as caught:
        settings(url)
    assert "hunter2" not in str(caught.value)


def test_amqps_uses_verifying_tls_context() -> None:
    params = connection_parameters(settings("amqps://u:p@broker.example:5671/"), name="txmq test")
    context = params.ssl_options.context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert params.ssl_options.server_hostname == "broker.example"


def test_describe_removes_password_from_driver_text() -> None:
    exc = OSError("auth for app:s3cr3t-pw@127.0.0.1 failed, password s3cr3t-pw")
    text = describe(settings(), exc)
    assert "s3cr3t" not in text
    assert "OSError" in text


def test_adapter_rejects_kafka_settings() -> None:
    with pytest.raises(ConfigurationError):
        RabbitMQAdapter(parse_broker_url("kafka://127.0.0.1:9092"))


def test_adapter_repr_hides_password() -> None:
    assert "s3cr3t" not in repr(RabbitMQAdapter(settings()))


def test_sources_are_work_queues_once_each() -> None:
    adapter = RabbitMQAdapter(settings())
    topologies = [Topology("g", "a", (1.0,)), Topology("g", "b"), Topology("g", "a")]
    assert adapter.sources_for(topologies) == ["g.a", "g.b"]


def test_retry_queues_dead_letter_back_to_the_work_queue_after_their_delay() -> None:
    adapter = RabbitMQAdapter(settings())
    queues = dict(adapter._queues(Topology("g", "t", (0.25, 30))))
    assert list(queues) == ["g.t", "g.t.retry.1", "g.t.retry.2", "g.t.dlq"]
    assert queues["g.t"] == queues["g.t.dlq"] == {"x-queue-type": "classic"}
    assert queues["g.t.retry.2"] == {
        "x-queue-type": "classic",
        "x-message-ttl": 30000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "g.t",
    }
    assert queues["g.t.retry.1"]["x-message-ttl"] == 250


def test_quorum_retry_queues_dead_letter_at_least_once() -> None:
    adapter = RabbitMQAdapter(settings(URL + "&queue_type=quorum"))
    queues = dict(adapter._queues(Topology("g", "t", (1,))))
    assert queues["g.t"] == {"x-queue-type": "quorum"}
    assert queues["g.t.retry.1"]["x-dead-letter-strategy"] == "at-least-once"


def test_missing_pika_asks_for_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "pika" or name.startswith(("pika.", "txmq.adapters.rabbitmq")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pika", None)
    with pytest.raises(MissingDependency, match=r"pip install 'txmq\[rabbitmq\]'"):
        importlib.import_module("txmq.adapters.rabbitmq.adapter")
