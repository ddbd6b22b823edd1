"""Physical names of a consumer group's queues and topics, the same on every broker.

For group ``g`` and topic ``t``:

* work queue (RabbitMQ queue bound to the deployment exchange with routing key ``t``) ``g.t``;
  on Kafka the group reads topic ``t`` itself;
* retry stage ``n`` (1-based): ``g.t.retry.n``;
* dead-letter queue: ``g.t.dlq``.
"""

from __future__ import annotations


def work_queue(group: str, topic: str) -> str:
    """RabbitMQ queue of ``group`` for ``topic``."""
    return f"{group}.{topic}"


def retry_queue(group: str, topic: str, stage: int) -> str:
    """Queue/topic holding messages waiting for retry ``stage`` (1-based)."""
    return f"{group}.{topic}.retry.{stage}"


def dead_letter_queue(group: str, topic: str) -> str:
    """Queue/topic of messages of ``group`` that failed for good."""
    return f"{group}.{topic}.dlq"


def is_retry_queue(group: str, name: str) -> bool:
    """Whether ``name`` is one of ``group``'s retry stages, ``retry_queue(group, t, n)``."""
    head, marker, stage = name.rpartition(".retry.")
    prefix = f"{group}."
    return bool(marker) and stage.isdigit() and head.startswith(prefix) and len(head) > len(prefix)
