"""The ``refusals`` contract suite on memory, RabbitMQ and Kafka."""

from txmq.testing.contract import expose, refusals
from txmq.testing.contract.builtin import ADAPTERS

expose(refusals, globals(), ADAPTERS)
