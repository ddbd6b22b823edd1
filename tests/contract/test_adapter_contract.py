"""The ``adapter`` contract suite on memory, RabbitMQ and Kafka."""

from txmq.testing.contract import adapter, expose
from txmq.testing.contract.builtin import ADAPTERS

expose(adapter, globals(), ADAPTERS)
