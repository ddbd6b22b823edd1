"""The ``tracing`` contract suite on memory, RabbitMQ and Kafka."""

from txmq.testing.contract import expose, tracing
from txmq.testing.contract.builtin import ADAPTERS

expose(tracing, globals(), ADAPTERS)
