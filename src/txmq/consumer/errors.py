"""The exception a handler raises to refuse a message for good."""

from __future__ import annotations

from txmq.errors import TxmqError


class Reject(TxmqError):
    """Raise in a handler to send the message to the dead-letter queue at once, no retries.

    The exception's text becomes the DLQ's ``x-txmq-error-message`` (truncated and redacted).

    Example:
        >>> raise Reject("order 7 references an unknown customer")  # doctest: +SKIP
    """
