"""txmq: RocketMQ-style transactional messages on RabbitMQ and Kafka, chosen by URL.

Everything public is importable from here; nothing else should import from deep paths.
"""

from __future__ import annotations

import logging

from txmq.adapters import Adapter, PublishOutcome, Topology, connect
from txmq.adapters.kafka.settings import KafkaSettings
from txmq.adapters.rabbitmq.settings import RabbitMQSettings
from txmq.adapters.registry import parse_broker_url
from txmq.config import redact
from txmq.consumer import (
    Compensation,
    Consumer,
    DeadLetter,
    DeadLetters,
    Reject,
    RetryPolicy,
    attempt_of,
    make_inbox_table,
    purge_inbox,
)
from txmq.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    DatabaseRefused,
    DatabaseUnavailable,
    InvalidDelay,
    InvalidMessage,
    InvalidURL,
    MessageDecodeError,
    MessageTooLarge,
    MissingDependency,
    PublishError,
    PublishRefused,
    QueueNotFound,
    RecordNotFound,
    RecordsFailed,
    SchemaMissing,
    TopologyError,
    TransactionError,
    TxmqError,
    WorkerBusy,
    WrongDatabase,
)
from txmq.message import Message, new_message_id
from txmq.outbox import (
    CheckBackPolicy,
    OutboxRecord,
    OutboxTables,
    Producer,
    Relay,
    SendResult,
    make_outbox_tables,
)
from txmq.sql.schema import create_schema, upgrade_schema
from txmq.sql.tables import metadata
from txmq.states import CheckLimitPolicy, LocalTransactionState, RecordState
from txmq.supervision import Health, LoopHealth, LoopState
from txmq.wire import Delivery

__version__ = "0.1.0"

# A library logs; the application decides where it goes (nothing on stderr by default).
logging.getLogger("txmq").addHandler(logging.NullHandler())

__all__ = [
    "Adapter",
    "BrokerError",
    "BrokerUnavailable",
    "CheckBackPolicy",
    "CheckLimitPolicy",
    "Compensation",
    "ConfigurationError",
    "Consumer",
    "DatabaseRefused",
    "DatabaseUnavailable",
    "DeadLetter",
    "DeadLetters",
    "Delivery",
    "Health",
    "InvalidDelay",
    "InvalidMessage",
    "InvalidURL",
    "KafkaSettings",
    "LocalTransactionState",
    "LoopHealth",
    "LoopState",
    "Message",
    "MessageDecodeError",
    "MessageTooLarge",
    "MissingDependency",
    "OutboxRecord",
    "OutboxTables",
    "Producer",
    "PublishError",
    "PublishOutcome",
    "PublishRefused",
    "QueueNotFound",
    "RabbitMQSettings",
    "RecordNotFound",
    "RecordState",
    "RecordsFailed",
    "Reject",
    "Relay",
    "RetryPolicy",
    "SchemaMissing",
    "SendResult",
    "Topology",
    "TopologyError",
    "TransactionError",
    "TxmqError",
    "WorkerBusy",
    "WrongDatabase",
    "__version__",
    "attempt_of",
    "connect",
    "create_schema",
    "make_inbox_table",
    "make_outbox_tables",
    "metadata",
    "new_message_id",
    "parse_broker_url",
    "purge_inbox",
    "redact",
    "upgrade_schema",
]
