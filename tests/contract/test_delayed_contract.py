"""The ``delayed`` contract suite on memory, RabbitMQ and Kafka."""

from txmq.testing.contract import delayed, expose
from txmq.testing.contract.builtin import ADAPTERS

expose(delayed, globals(), ADAPTERS)
