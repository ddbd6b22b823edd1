"""The exceptions txmq raises.

Every error txmq raises derives from :class:`TxmqError`. Errors of the broker drivers
(pika, confluent-kafka) and of the database driver are wrapped at the boundary, with the
original kept as ``__cause__``; messages never contain a password or SASL secret.
"""

from __future__ import annotations


class TxmqError(Exception):
    """Root of every error txmq raises."""


class ConfigurationError(TxmqError):
    """A setting is missing, contradictory or out of range."""


class InvalidURL(ConfigurationError):
    """A broker or database URL cannot be parsed, or names an unknown scheme.

    The URL in the message is redacted: its password is replaced by ``***``.
    """


class MissingDependency(ConfigurationError, ImportError):
    """The driver for a broker or feature is not installed (e.g. ``pip install txmq[kafka]``)."""


class WrongDatabase(ConfigurationError):
    """A session or connection is bound to another database than the one txmq was given."""


class InvalidMessage(TxmqError, ValueError):
    """A message cannot be sent as given: a bad topic or key, a body that is not bytes, ..."""


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


class TopologyError(BrokerError):
    """Queues, exchanges or topics could not be declared as asked (e.g. a conflicting type)."""


class TransactionError(TxmqError):
    """The outcome of a transactional send could not be established or applied."""


class RecordNotFound(TxmqError, LookupError):
    """No outbox record has the given id (or it is not in a state the operation accepts)."""


class WorkerBusy(TxmqError):
    """Another relay or check-back worker of the same producer groups holds the SQLite
    database (where only one may work at a time); this one stands by."""
