"""The exceptions txmq raises.

Every error txmq raises derives from :class:`TxmqError`. Errors of the broker drivers
(pika, confluent-kafka) and of the database driver are wrapped at the boundary, with the
original kept as ``__cause__``; messages never contain a password or SASL secret.
"""

from __future__ import annotations

from collections.abc import Sequence


class TxmqError(Exception):
    """Root of every error txmq raises."""


class ConfigurationError(TxmqError):
    """A setting is missing, contradictory or out of range."""


class InvalidURL(ConfigurationError):
    """A broker or database URL cannot be parsed, or names an unknown scheme.

    The URL in the message is redacted: its password is replaced by ``***``.
    """


class MissingDependency(ConfigurationError, ImportError):
    """The driver for a broker or feature is not installed (e.g. ``pip install 'txmq[kafka]'``)."""


class WrongDatabase(ConfigurationError):
    """A session or connection is bound to another database than the one txmq was given."""


class DatabaseRefused(ConfigurationError):
    """The database server refused the connection for a reason retrying cannot fix: the
    authentication failed, or the role or database does not exist (check the database URL).
    """


class DatabaseUnavailable(TxmqError):
    """The database cannot be reached right now (connection refused or lost, server
    restarting); background loops wait and reconnect."""


class SchemaMissing(ConfigurationError):
    """txmq's tables are not in the database (or not under the names it was given).

    The message says how to create them: :func:`txmq.create_schema`, your migrations, or
    ``txmq schema create``. The database driver's error is kept as ``__cause__``.
    """


class InvalidMessage(TxmqError, ValueError):
    """A message cannot be sent as given: a bad topic or key, a body that is not bytes, ..."""


class InvalidDelay(InvalidMessage):
    """A delivery time cannot be used as given: both ``deliver_at`` and ``delay``, a naive
    datetime (no time zone), a negative delay, or a type that is neither."""


class MessageTooLarge(InvalidMessage):
    """The body (plus headers) is larger than the configured maximum."""


class MessageDecodeError(TxmqError):
    """A message read from the broker is not a txmq message (no id, bad headers, ...).

    Consumers treat it as non-retryable: it goes to the dead-letter queue at once.
    """


class BrokerError(TxmqError):
    """The broker failed an operation."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached (refused, timed out, authentication failed, closed)."""


class PublishError(BrokerError):
    """The broker did not confirm a message: it was nacked, returned as unroutable, or timed out."""


class PublishRefused(PublishError):
    """The broker refused a message for good: too large, not authorised, invalid topic.

    Publishing it again fails the same way. The relay retries it a bounded number of times
    (``Relay(max_refused_attempts=...)``) and then moves its record to ``FAILED``.
    """


class TopologyError(BrokerError):
    """Queues, exchanges or topics could not be declared as asked (e.g. a conflicting type)."""


class QueueNotFound(TopologyError, LookupError):
    """A queue or topic an administrative operation needs does not exist.

    For example the dead-letter queue of a mistyped group or topic: it is created when a
    consumer of that group declares its topology.
    """


class TransactionError(TxmqError):
    """The outcome of a transactional send could not be established or applied."""


class RecordsFailed(TxmqError):
    """Outbox records went ``FAILED`` during a relay call (the broker refused them for good).

    Raised by :meth:`Relay.drain` and :meth:`Relay.run_once` after everything they did is
    committed: the other records are published and marked as usual.

    Attributes:
        failed: ``(message id, last error)`` of each record that went FAILED.
        sent: how many records the call marked SENT.
    """

    def __init__(self, failed: Sequence[tuple[str, str]], sent: int) -> None:
        self.failed = tuple(failed)
        self.sent = sent
        shown = ", ".join(f"{message_id} ({error})" for message_id, error in self.failed[:5])
        more = f" and {len(self.failed) - 5} more" if len(self.failed) > 5 else ""
        super().__init__(
            f"{len(self.failed)} outbox record(s) refused for good by the broker and now "
            f"FAILED: {shown}{more}; {sent} sent. Retry them with `txmq outbox retry ID` or "
            "discard them with `txmq outbox discard ID`"
        )


class RecordNotFound(TxmqError, LookupError):
    """No outbox record has the given id (or it is not in a state the operation accepts)."""


class WorkerBusy(TxmqError):
    """Another relay or check-back worker of the same producer groups holds the SQLite
    database (where only one may work at a time); this one stands by."""


class SagaError(TxmqError):
    """A saga cannot be started, advanced or operated on as asked."""


class SagaNotFound(SagaError, LookupError):
    """No saga instance has the given id (or it is not in a state the operation accepts)."""


class StepFailed(SagaError):
    """Raised by a saga participant's action to say "this step failed for good" (a business
    failure such as "out of stock"): the action's effects are rolled back, the failure is
    recorded by the barrier and replied to the orchestrator, which compensates the steps
    done before it. Any other exception is a technical failure: the consumer retries it.
    """
