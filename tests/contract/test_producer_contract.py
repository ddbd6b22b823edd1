"""The ``producer`` contract suite on memory, RabbitMQ and Kafka."""

from txmq.testing.contract import expose, producer
from txmq.testing.contract.builtin import ADAPTERS

expose(producer, globals(), ADAPTERS)
