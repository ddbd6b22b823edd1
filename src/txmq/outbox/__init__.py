"""Producer side: outbox tables, staging, half messages, check-back and the relay."""

from txmq.outbox.checkback import CheckBack, CheckBackPolicy, Checker
from txmq.outbox.producer import Executor, Producer, SendResult
from txmq.outbox.relay import Relay
from txmq.outbox.store import OutboxRecord, OutboxStore
from txmq.sql.tables import OutboxTables, make_outbox_tables

__all__ = [
    "CheckBack",
    "CheckBackPolicy",
    "Checker",
    "Executor",
    "OutboxRecord",
    "OutboxStore",
    "OutboxTables",
    "Producer",
    "Relay",
    "SendResult",
    "make_outbox_tables",
]
