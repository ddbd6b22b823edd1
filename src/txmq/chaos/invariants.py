"""The invariant checker: from the recorded history and the final state, what went wrong.

Nothing here talks to a database or a broker; :class:`FinalState` is read by the runner and
can be built by hand, which is how the checker itself is tested.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from txmq.chaos.history import Operation
from txmq.chaos.scenario import FROZEN
from txmq.chaos.workload import HALF_MODES, POISON

#: How many ids each finding lists in the report (the counts are complete).
SAMPLE = 10


@dataclass(frozen=True, slots=True)
class Committed:
    """A transfer whose debit committed (a row in service A's transfers table)."""

    message_id: str
    mode: str
    payer: str
    payee: str
    amount: int


@dataclass(frozen=True, slots=True)
class Credit:
    """A row of service B's credits table; ``row`` is the order it was applied in."""

    row: int
    message_id: str
    key: str | None
    seq: int


@dataclass(frozen=True)
class FinalState:
    """What the databases and the broker hold once the run has drained.

    Attributes:
        committed: every transfer that committed, by message id.
        credits: the credits applied, in any order.
        refunds: the original message id of every refund applied (one entry per refund).
        deliveries: how often the crediting handler was handed each message id.
        dead_letters: the message ids in the crediting group's DLQ.
        opening: every account's opening balance.
        balances: every account's balance at the end.
        inbox_duplicates: deliveries the inbox stopped before the handler.
    """

    committed: Mapping[str, Committed]
    credits: Sequence[Credit]
    refunds: Sequence[str]
    deliveries: Mapping[str, int]
    dead_letters: Sequence[str]
    opening: Mapping[str, int]
    balances: Mapping[str, int]
    inbox_duplicates: int = 0


@dataclass(frozen=True)
class Invariants:
    """The verdict. ``aborted_reads`` is None where the broker has no transactions to abort
    (RabbitMQ). ``examples`` names a few message ids behind each non-zero count."""

    lost: int
    applied_twice: int
    rolled_back_delivered: int
    aborted_reads: int | None
    money_conserved: bool
    dlq_expected: int
    dlq_actual: int
    dlq_matches: bool
    order_violations: int
    stalls: int
    redeliveries: int
    #: Raw duplicate deliveries: copies of an applied message the inbox stopped.
    inbox_duplicates: int = 0
    #: Stalls during which no service exited or said it was not ready (among ``stalls``).
    silent_stalls: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        """One line per invariant that does not hold (empty: all hold)."""
        found = [
            f"{name} = {value}"
            for name, value in (
                ("lost", self.lost),
                ("applied_twice", self.applied_twice),
                ("rolled_back_delivered", self.rolled_back_delivered),
                ("aborted_reads", self.aborted_reads or 0),
                ("order_violations", self.order_violations),
                ("stalls", self.stalls),
                ("silent_stalls", self.silent_stalls),
            )
            if value
        ]
        if not self.money_conserved:
            found.append("money is not conserved")
        if not self.dlq_matches:
            found.append(f"the DLQ holds {self.dlq_actual}, expected {self.dlq_expected}")
        return found

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_json(self) -> dict[str, object]:
        return {
            "lost": self.lost,
            "applied_twice": self.applied_twice,
            "rolled_back_delivered": self.rolled_back_delivered,
            "aborted_reads": self.aborted_reads,
            "money_conserved": self.money_conserved,
            "dlq_expected": self.dlq_expected,
            "dlq_actual": self.dlq_actual,
            "dlq_matches": self.dlq_matches,
            "order_violations": self.order_violations,
            "stalls": self.stalls,
            "silent_stalls": self.silent_stalls,
            "redeliveries": self.redeliveries,
            "inbox_duplicates": self.inbox_duplicates,
            "examples": self.examples,
        }


def check(
    history: Sequence[Operation],
    state: FinalState,
    *,
    transactional_broker: bool,
    stalls: int = 0,
    silent_stalls: int = 0,
) -> Invariants:
    """Judge a run.

    Args:
        history: every operation the bank recorded.
        state: the final state.
        transactional_broker: whether aborted reads can exist (Kafka: half messages are
            written inside Kafka transactions that a rollback aborts).
        stalls: times the system did not recover within its bound (counted by the runner).
        silent_stalls: those of them no service said anything about (no exit, no readiness
            false).
    """
    examples: dict[str, list[str]] = {}
    committed = state.committed
    credited = Counter(credit.message_id for credit in state.credits)
    refunded = Counter(state.refunds)
    dead = set(state.dead_letters)

    # Lost: a committed transfer without its effect, or one the producer was told committed
    # that left no trace in the database.
    lost = [
        message_id
        for message_id, transfer in committed.items()
        if not _settled(transfer, credited, refunded, dead)
    ]
    lost += [
        op.message_id for op in history if op.outcome == "ok" and op.message_id not in committed
    ]
    twice = [m for m, n in credited.items() if n > 1] + [m for m, n in refunded.items() if n > 1]
    applied_twice = sum(credited[m] - 1 for m in credited if credited[m] > 1) + sum(
        refunded[m] - 1 for m in refunded if refunded[m] > 1
    )
    # Anything that reached service B without a committed transfer behind it.
    seen = set(state.deliveries) | set(credited) | set(refunded) | dead
    rolled_back = sorted(seen - set(committed))
    modes = {op.message_id: op.mode for op in history}
    aborted = [m for m in rolled_back if modes.get(m) in HALF_MODES]
    expected_dlq = {m for m, transfer in committed.items() if _fails_for_good(transfer)}
    # Order is promised for the transfers that reported success: one whose send ended
    # unknown (its database connection broke around the commit) may have committed, and
    # is then delivered once recovered (check-back, relay), after later ones of its key.
    succeeded = {op.message_id for op in history if op.outcome == "ok"}
    violations = _order_violations(c for c in state.credits if c.message_id in succeeded)
    redeliveries = sum(n - 1 for n in state.deliveries.values() if n > 1)
    for name, ids in (
        ("lost", lost),
        ("applied_twice", twice),
        ("rolled_back_delivered", rolled_back),
        ("dlq_missing", sorted(expected_dlq - dead)),
        ("dlq_unexpected", sorted(dead - expected_dlq)),
        ("order_violations", violations),
    ):
        if ids:
            examples[name] = list(ids)[:SAMPLE]
    return Invariants(
        lost=len(lost),
        applied_twice=applied_twice,
        rolled_back_delivered=len(rolled_back),
        aborted_reads=len(aborted) if transactional_broker else None,
        money_conserved=dict(state.balances) == expected_balances(state),
        dlq_expected=len(expected_dlq),
        dlq_actual=len(dead),
        dlq_matches=expected_dlq == dead,
        order_violations=len(violations),
        stalls=stalls,
        silent_stalls=silent_stalls,
        redeliveries=redeliveries,
        inbox_duplicates=state.inbox_duplicates,
        examples=examples,
    )


def _fails_for_good(transfer: Committed) -> bool:
    return transfer.mode == POISON or transfer.payee in FROZEN


def _settled(
    transfer: Committed, credited: Counter[str], refunded: Counter[str], dead: set[str]
) -> bool:
    if transfer.mode == POISON:
        return transfer.message_id in dead
    if transfer.payee in FROZEN:
        return refunded[transfer.message_id] > 0
    return credited[transfer.message_id] > 0


def expected_balances(state: FinalState) -> dict[str, int]:
    """The balances every committed transfer, applied once, makes: a frozen payee's
    transfer is refunded, so its payer ends where it began."""
    balances = dict(state.opening)
    for transfer in state.committed.values():
        if transfer.mode == POISON or transfer.payee in FROZEN:
            continue
        balances[transfer.payer] -= transfer.amount
        balances[transfer.payee] += transfer.amount
    return balances


def _order_violations(credits: Iterable[Credit]) -> list[str]:
    """Credits applied after a later message of their key (first application counts)."""
    highest: dict[str, int] = {}
    applied: set[str] = set()
    violations = []
    for credit in sorted(credits, key=lambda c: c.row):
        if credit.key is None or credit.message_id in applied:
            continue
        applied.add(credit.message_id)
        if credit.seq < highest.get(credit.key, -1):
            violations.append(credit.message_id)
        highest[credit.key] = max(highest.get(credit.key, -1), credit.seq)
    return violations
