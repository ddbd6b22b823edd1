"""txmq: RocketMQ-style transactional messages on RabbitMQ and Kafka, chosen by URL.

Everything public is importable from here; nothing else should import from deep paths.
"""

from __future__ import annotations

from txmq.adapters import Adapter, Delivery, PublishOutcome, Topology, connect
from txmq.config import KafkaSettings, RabbitMQSettings, parse_broker_url, redact
from txmq.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    InvalidMessage,
    InvalidURL,
    MessageDecodeError,
    MessageTooLarge,
    MissingDependency,
    PublishError,
    TopologyError,
    TxmqError,
)
from txmq.message import Message, new_message_id

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigurationError",
    "Delivery",
    "InvalidMessage",
    "InvalidURL",
    "KafkaSettings",
    "Message",
    "MessageDecodeError",
    "MessageTooLarge",
    "MissingDependency",
    "PublishError",
    "PublishOutcome",
    "RabbitMQSettings",
    "Topology",
    "TopologyError",
    "TxmqError",
    "__version__",
    "connect",
    "new_message_id",
    "parse_broker_url",
    "redact",
]
