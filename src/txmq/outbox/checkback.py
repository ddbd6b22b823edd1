"""Check-back: resolve PREPARED half messages whose outcome is not known yet.

Any instance of a producer group may run a :class:`CheckBack`; records are claimed with
``FOR UPDATE SKIP LOCKED`` so two instances never answer the same record at once (on SQLite,
which cannot skip locked rows, one check-back worker per group works at a time: see
:mod:`txmq.outbox.worker_lock`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection

from txmq.database_errors import retry_lock_conflicts
from txmq.message import Message
from txmq.outbox.store import OutboxRecord, OutboxStore, utcnow
from txmq.outbox.worker_lock import WorkerLock
from txmq.states import CheckLimitPolicy, LocalTransactionState, RecordState
from txmq.telemetry import CHECK_BACKS
from txmq.tracing import check_span

log = logging.getLogger("txmq.checkback")

#: ``checker(message, check_count) -> state``; ``check_count`` is 1 on the first check-back.
Checker = Callable[[Message, int], LocalTransactionState]


@dataclass(frozen=True, slots=True)
class CheckBackPolicy:
    """When and how often PREPARED records are checked, and what happens at the limit.

    Attributes:
        immunity: age before the first check-back (RocketMQ: 6 s); per message overridable.
        interval: time between check-backs of one record (RocketMQ: 30 s... 60 s).
        max_checks: check-backs that may answer UNKNOWN before ``on_limit`` applies.
        on_limit: PARK (default; an operator decides), COMMIT or ROLLBACK.
        executor_lease: on SQLite (no row locks), how long a running executor keeps
            check-backs away from its record; renewed every third of it while the executor
            runs, so it matters only when the producer dies mid-executor: check-back then
            resolves the record once the lease has run out. (Elsewhere the record is
            row-locked while its executor runs.)
    """

    immunity: timedelta = timedelta(seconds=6)
    interval: timedelta = timedelta(seconds=30)
    max_checks: int = 15
    on_limit: CheckLimitPolicy = CheckLimitPolicy.PARK
    executor_lease: timedelta = timedelta(seconds=10)

    def __post_init__(self) -> None:
        if self.max_checks < 1:
            raise ValueError("max_checks must be at least 1")
        if self.immunity < timedelta(0) or self.interval <= timedelta(0):
            raise ValueError("immunity must be >= 0 and interval > 0")
        if self.executor_lease <= timedelta(0):
            raise ValueError("executor_lease must be > 0")


_LIMIT_TO_STATE = {
    CheckLimitPolicy.PARK: RecordState.PARKED,
    CheckLimitPolicy.COMMIT: RecordState.READY,
    CheckLimitPolicy.ROLLBACK: RecordState.ROLLED_BACK,
}


class CheckBack:
    """Answers due check-backs of one producer group.

    Records written by :meth:`Producer.send_in_local_transaction` answer themselves through
    their transaction marker; the others ask ``checker``. A checker that raises counts as
    UNKNOWN.
    """

    def __init__(
        self,
        store: OutboxStore,
        group: str,
        checker: Checker | None,
        policy: CheckBackPolicy,
    ) -> None:
        self.store = store
        self.group = group
        self.checker = checker
        self.policy = policy
        #: On SQLite: the right to be the group's one check-back worker.
        self.lock = WorkerLock(store, "checkback", (group,))
        self._standing_by = False

    def loop_step(self) -> bool:
        """One step of a background check-back loop: a pass once this worker holds the
        group's lock (on SQLite; always elsewhere), else stand by. Returns whether records
        were looked at (the loop then goes on without waiting). The loop releases
        :attr:`lock` when it ends."""
        if not self.lock.acquire():
            if not self._standing_by:
                log.info("check-back stands by: another worker holds %s", self.lock.description)
                self._standing_by = True
            return False
        self._standing_by = False
        return self.run_once() > 0

    def run_once(self, limit: int = 50) -> int:
        """Check every due record (up to ``limit``); return how many were looked at.

        Raises:
            WorkerBusy: on SQLite, another check-back worker of the group is working.
        """
        with self.lock.holding():
            # A deadlock (InnoDB: a marker insert meeting another one) rolled the whole pass
            # back: nothing was decided, so the pass runs again.
            return retry_lock_conflicts(lambda: self._pass(limit), "a check-back pass")

    def _pass(self, limit: int) -> int:
        with self.store.engine.begin() as connection:
            now = utcnow()
            due = self.store.claim_due_checks(connection, self.group, limit, now=now)
            for record in due:
                self._check(connection, record, now)
        return len(due)

    def _check(self, connection: Connection, record: OutboxRecord, due: datetime) -> None:
        """Decide or postpone ``record``, claimed as due at ``due``, in a ``check`` span of
        the message's trace.

        Every write requires the record to be still due: a producer whose executor is
        running has moved its next check past ``due`` (its lease), and then nothing is
        decided, even on SQLite, where the claim does not lock the record.
        """
        count = record.check_count + 1
        with check_span(record.message, group=self.group, count=count) as answered:
            answered(self._decide(connection, record, due, count))

    def _decide(
        self, connection: Connection, record: OutboxRecord, due: datetime, count: int
    ) -> str:
        """What :meth:`_check` does; returns the answer the check got."""
        store = self.store
        message_id = record.message.id
        if record.tx_key is not None:
            # Self-answering: a ROLLBACK marker wins only if the local transaction never
            # committed; if it is still running, this insert waits for it to end.
            outcome = store.insert_marker(connection, record.tx_key, LocalTransactionState.ROLLBACK)
            to = (
                RecordState.READY
                if outcome is LocalTransactionState.COMMIT
                else RecordState.ROLLED_BACK
            )
            store.transition(connection, message_id, to, due=due)
            CHECK_BACKS.labels(self.group, f"marker-{outcome.value}").inc()
            log.info(
                "check-back of %s answered by its marker: %s",
                *(message_id, outcome.value),
                extra={"message_id": message_id, "group": self.group, "state": to.value},
            )
            return f"marker-{outcome.value}"
        state = self._ask(record.message, count)
        CHECK_BACKS.labels(self.group, state.value).inc()
        if state is LocalTransactionState.COMMIT:
            store.count_check(connection, record.seq, count, due=due)
            store.transition(connection, message_id, RecordState.READY, due=due)
        elif state is LocalTransactionState.ROLLBACK:
            store.count_check(connection, record.seq, count, due=due)
            store.transition(connection, message_id, RecordState.ROLLED_BACK, due=due)
        elif count >= self.policy.max_checks:
            store.count_check(connection, record.seq, count, due=due)
            to = _LIMIT_TO_STATE[self.policy.on_limit]
            store.transition(
                connection,
                message_id,
                to,
                error=f"check-back limit ({self.policy.max_checks}) reached",
                due=due,
            )
            log.warning(
                "message %s unresolved after %d check-backs: %s",
                *(message_id, count, to.value),
                extra={
                    "message_id": message_id,
                    "group": self.group,
                    "state": to.value,
                    "attempt": count,
                },
            )
        else:
            store.postpone_check(
                connection, record.seq, count, utcnow() + self.policy.interval, due=due
            )
        log.debug("check-back %d of %s: %s", count, message_id, state.value)
        return state.value

    def _ask(self, message: Message, count: int) -> LocalTransactionState:
        if self.checker is None:
            return LocalTransactionState.UNKNOWN
        try:
            return LocalTransactionState(self.checker(message, count))
        except Exception:
            log.exception(
                "checker of group %s raised for %s: counted UNKNOWN", self.group, message.id
            )
            return LocalTransactionState.UNKNOWN
