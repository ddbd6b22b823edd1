"""Broker adapters, chosen by URL scheme (see :mod:`txmq.adapters.registry`).

Each broker is a package of its own (``rabbitmq/``, ``kafka/``, ``memory/``) with its
settings, connection, publisher, subscription and wire format; everything above this
package talks to brokers only through the protocol in :mod:`txmq.adapters.base`.
"""

from __future__ import annotations

from txmq.adapters.base import (
    Adapter,
    Capabilities,
    Publisher,
    PublishOutcome,
    QueueBrowser,
    Subscription,
    Topology,
    Transaction,
    Withheld,
)
from txmq.adapters.names import dead_letter_queue, retry_queue, work_queue
from txmq.adapters.registry import adapter_for, parse_broker_url
from txmq.wire import Delivery


def connect(url: str | None = None, *, check: bool = True) -> Adapter:
    """Return the adapter for a broker URL (or ``$TXMQ_BROKER_URL``).

    Args:
        url: ``rabbitmq://``, ``amqp://``, ``amqps://`` or ``kafka://`` URL, or
            ``memory://name`` for the in-process broker of that name (one per name and
            process, shared by every ``connect`` of it).
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
    "Adapter",
    "Capabilities",
    "Delivery",
    "PublishOutcome",
    "Publisher",
    "QueueBrowser",
    "Subscription",
    "Topology",
    "Transaction",
    "Withheld",
    "adapter_for",
    "connect",
    "dead_letter_queue",
    "parse_broker_url",
    "retry_queue",
    "work_queue",
]
