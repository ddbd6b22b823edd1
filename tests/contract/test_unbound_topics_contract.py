"""The ``unbound_topics`` contract suite on memory, RabbitMQ and Kafka."""

from txmq.testing.contract import expose, unbound_topics
from txmq.testing.contract.builtin import ADAPTERS

expose(unbound_topics, globals(), ADAPTERS)
