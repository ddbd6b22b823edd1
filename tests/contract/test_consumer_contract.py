"""The ``consumer`` contract suite on memory, RabbitMQ and Kafka."""

from txmq.testing.contract import consumer, expose
from txmq.testing.contract.builtin import ADAPTERS

expose(consumer, globals(), ADAPTERS)
