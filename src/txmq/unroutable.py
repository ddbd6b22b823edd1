"""Messages published while no consumer group had a queue for their topic.

Kafka keeps such a message in its topic, and a group created later reads it (new groups
start at the earliest offset). RabbitMQ routes it, through the deployment exchange's
alternate exchange, into the ``<exchange>.unroutable`` queue; a consumer's
:meth:`~txmq.Adapter.declare` (run by ``Consumer.start()``) re-routes its topics' held
messages to the queues it just bound. This module lists what is held and re-routes it by
hand, e.g. after binding queues with ``broker.declare([...])`` from a deployment script:
``txmq unroutable list|reroute --broker URL`` (:mod:`txmq.cli.unroutable`).
"""

from __future__ import annotations

from collections.abc import Iterable

from txmq.adapters import Adapter
from txmq.message import Message


def held(broker: Adapter, *, limit: int = 100, timeout: float = 5.0) -> list[Message]:
    """Up to ``limit`` held messages, oldest first, left where they are (none on Kafka)."""
    queue = broker.unroutable_queue
    if queue is None:
        return []
    deliveries = broker.read_queue(queue, limit=limit, timeout=timeout)
    return [d.message for d in deliveries if d.message is not None]


def reroute(broker: Adapter, topics: Iterable[str] | None = None) -> int:
    """Publish the held messages of ``topics`` (all with ``None``) to their topics again;
    return how many. One whose topic still has no queue is held again."""
    return broker.reroute_unroutable(topics)
