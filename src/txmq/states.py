"""The states of the transactional producer (DESIGN.md section 2)."""

from __future__ import annotations

from enum import StrEnum


class LocalTransactionState(StrEnum):
    """What a local-transaction executor or checker answers (RocketMQ's three states).

    An executor or checker that raises counts as ``UNKNOWN``, never as ``COMMIT``.
    """

    COMMIT = "COMMIT"
    ROLLBACK = "ROLLBACK"
    UNKNOWN = "UNKNOWN"


class RecordState(StrEnum):
    """Lifecycle of an outbox / half-message record.

    ``PREPARED`` -> ``READY`` -> ``SENT`` is the happy path; ``PREPARED`` -> ``ROLLED_BACK``
    when the local transaction rolled back; ``PREPARED`` -> ``PARKED`` when the check-back
    limit is reached under the PARK policy (an operator decides; never dropped silently);
    ``READY`` -> ``FAILED`` when the broker refused the message for good (too large, not
    authorised, invalid topic): it keeps its ``last_error`` until an operator retries it
    (back to ``READY``) or discards it.

    A delayed message (``deliver_at=`` / ``delay=``) waits as ``DELAYED`` until its due time,
    when a relay moves it to ``READY``; a staged one is ``DELAYED`` from its transaction's
    commit, a half message from its COMMIT (``PREPARED`` -> ``DELAYED``; already due: straight
    to ``READY``). ``DELAYED`` -> ``CANCELLED`` when the application cancels it before then
    (:meth:`txmq.Producer.cancel`); a cancelled record is never published, and is purged
    like a SENT one.
    """

    PREPARED = "PREPARED"
    READY = "READY"
    SENT = "SENT"
    ROLLED_BACK = "ROLLED_BACK"
    PARKED = "PARKED"
    FAILED = "FAILED"
    DELAYED = "DELAYED"
    CANCELLED = "CANCELLED"


class CheckLimitPolicy(StrEnum):
    """What happens to a record whose check-backs all answered UNKNOWN."""

    PARK = "PARK"
    COMMIT = "COMMIT"
    ROLLBACK = "ROLLBACK"
