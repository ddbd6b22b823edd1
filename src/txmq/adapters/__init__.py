"""Broker adapters, chosen by URL scheme.

The registry maps a settings ``system`` to ``"module:factory"`` (a class or a function
taking the settings); the module is imported only
when that broker is used, so ``pip install 'txmq[kafka]'`` users never need pika and the other
way round.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from txmq.adapters.base import (
    Adapter,
    Delivery,
    Publisher,
    PublishOutcome,
    QueueBrowser,
    Subscription,
    Topology,
    dead_letter_queue,
    retry_queue,
    work_queue,
)
from txmq.config import BrokerSettings, parse_broker_url

ADAPTERS: dict[str, str] = {
    "rabbitmq": "txmq.adapters.rabbitmq:RabbitMQAdapter",
    "kafka": "txmq.adapters.kafka:KafkaAdapter",
    "memory": "txmq.testing.fakes:memory_broker",
}


def adapter_for(settings: BrokerSettings) -> Adapter:
    """Build the adapter for ``settings``.

    Raises:
        MissingDependency: the broker's driver is not installed.
    """
    module_name, _, factory_name = ADAPTERS[settings.system].partition(":")
    factory: Callable[[BrokerSettings], Adapter] = getattr(
        importlib.import_module(module_name), factory_name
    )
    return factory(settings)


def connect(url: str | None = None, *, check: bool = True) -> Adapter:
    """Return the adapter for a broker URL (or ``$TXMQ_BROKER_URL``).

    Args:
        url: ``rabbitmq://``, ``amqp://``, ``amqps://`` or ``kafka://`` URL, or
            ``memory://name`` for the in-process :class:`~txmq.testing.fakes.InMemoryBroker`
            of that name (one per name and process, shared by every ``connect`` of it).
        check: connect once now (bounded by ``connect_timeout``) so a wrong host or password
            fails here rather than at the first publish.

    Raises:
        InvalidURL: malformed URL or unknown scheme (password redacted).
        MissingDependency: ``pip install 'txmq[rabbitmq]'`` / ``txmq[kafka]`` needed.
        BrokerUnavailable: ``check`` and the broker cannot be reached in time.

    Example:
        >>> broker = txmq.connect("kafka://127.0.0.1:9092")  # doctest: +SKIP
    """
    adapter = adapter_for(parse_broker_url(url))
    if check:
        adapter.ping()
    return adapter


__all__ = [
    "ADAPTERS",
    "Adapter",
    "Delivery",
    "PublishOutcome",
    "Publisher",
    "QueueBrowser",
    "Subscription",
    "Topology",
    "adapter_for",
    "connect",
    "dead_letter_queue",
    "retry_queue",
    "work_queue",
]
