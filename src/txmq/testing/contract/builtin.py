"""The :class:`~txmq.testing.contract.Features` of txmq's own adapters, for its own test run.

``ADAPTERS`` maps the ids the pytest plugin's ``broker_url`` fixture knows (``memory``,
``rabbitmq``, ``kafka``) to what each broker can do.
"""

from __future__ import annotations

from collections.abc import Mapping

from txmq.testing.contract.features import Features


def _rabbitmq_raw_publish(url: str, topic: str, body: bytes, headers: Mapping[str, str]) -> None:
    import pika

    from txmq.adapters.rabbitmq.connection import open_blocking
    from txmq.adapters.rabbitmq.settings import RabbitMQSettings
    from txmq.adapters.registry import parse_broker_url

    settings = parse_broker_url(url)
    assert isinstance(settings, RabbitMQSettings)
    connection = open_blocking(settings, name="test legacy publisher")
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            settings.exchange, topic, body, pika.BasicProperties(headers=dict(headers))
        )
    finally:
        connection.close()


def _kafka_raw_publish(url: str, topic: str, body: bytes, headers: Mapping[str, str]) -> None:
    from confluent_kafka import Producer

    from txmq.adapters.kafka.settings import KafkaSettings
    from txmq.adapters.registry import parse_broker_url

    settings = parse_broker_url(url)
    assert isinstance(settings, KafkaSettings)
    producer = Producer({"bootstrap.servers": ",".join(settings.bootstrap_servers)})
    producer.produce(topic, body, headers=list(headers.items()))
    assert producer.flush(10) == 0


MEMORY = Features(replays_to_work_queue=True, unroutable_held_in_a_queue=True)

RABBITMQ = Features(
    across_processes=True,
    replays_to_work_queue=True,
    unroutable_held_in_a_queue=True,
    raw_publish=_rabbitmq_raw_publish,
    protocol="amqp-0-9-1",
)

KAFKA = Features(
    across_processes=True,
    native_transactions=True,
    abandon_url_options="transaction.timeout.ms=5000",
    dead_letters_stay_after_replay=True,
    raw_publish=_kafka_raw_publish,
    protocol="kafka",
)

ADAPTERS: Mapping[str, Features] = {"memory": MEMORY, "rabbitmq": RABBITMQ, "kafka": KAFKA}
