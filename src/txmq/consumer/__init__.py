"""The consumer side: inbox-protected handlers, retries, dead letters, compensation.

See :class:`Consumer` for the guarantees and :class:`DeadLetters` for the DLQ admin.
"""

from __future__ import annotations

from txmq.consumer.compensation import Compensation, compensation_id, compensation_topic
from txmq.consumer.dlq import DeadLetter, DeadLetters, ReplayResult
from txmq.consumer.errors import Reject
from txmq.consumer.inbox import purge_inbox
from txmq.consumer.policy import RetryPolicy
from txmq.consumer.runner import Consumer
from txmq.consumer.stats import StatsSnapshot
from txmq.sql.tables import make_inbox_table
from txmq.wire import attempt_of, inbox_key

__all__ = [
    "Compensation",
    "Consumer",
    "DeadLetter",
    "DeadLetters",
    "Reject",
    "ReplayResult",
    "RetryPolicy",
    "StatsSnapshot",
    "attempt_of",
    "compensation_id",
    "compensation_topic",
    "inbox_key",
    "make_inbox_table",
    "purge_inbox",
]
