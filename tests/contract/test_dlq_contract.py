"""The ``dlq`` contract suite on memory, RabbitMQ and Kafka."""

from txmq.testing.contract import dlq, expose
from txmq.testing.contract.builtin import ADAPTERS

expose(dlq, globals(), ADAPTERS)
