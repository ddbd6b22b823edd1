"""Which transfer the bank makes next: a pure function of the seed and the transfer's index.

Every producer mode is in the mix, with chosen rollbacks, transfers to frozen accounts (the
credit fails for good: dead-lettered, then compensated) and poison messages (undecodable:
dead-lettered at once). A restarted bank goes on from the next index, so the whole run's
workload depends only on the seed and on how many transfers were made.
"""

from __future__ import annotations

import json
import random
import time

from txmq.chaos.history import Operation
from txmq.chaos.scenario import FROZEN, PAYERS, Scenario

OUTBOX = "outbox"
OUTBOX_ROLLBACK = "outbox-rollback"
LOCAL = "local"
LOCAL_ROLLBACK = "local-rollback"
HALF_COMMIT = "half-commit"
HALF_ROLLBACK = "half-rollback"
#: The executor commits, answers UNKNOWN; the check-back finds the debit and commits.
HALF_UNKNOWN_COMMIT = "half-unknown-commit"
#: The executor does nothing, answers UNKNOWN; the check-back finds no debit and rolls back.
HALF_UNKNOWN_ROLLBACK = "half-unknown-rollback"
POISON = "poison"

#: (mode, weight, whether its local transaction commits)
MODES: tuple[tuple[str, int, bool], ...] = (
    (OUTBOX, 30, True),
    (OUTBOX_ROLLBACK, 6, False),
    (LOCAL, 15, True),
    (LOCAL_ROLLBACK, 5, False),
    (HALF_COMMIT, 15, True),
    (HALF_ROLLBACK, 5, False),
    (HALF_UNKNOWN_COMMIT, 7, True),
    (HALF_UNKNOWN_ROLLBACK, 5, False),
    (POISON, 3, True),
)
HALF_MODES = (HALF_COMMIT, HALF_ROLLBACK, HALF_UNKNOWN_COMMIT, HALF_UNKNOWN_ROLLBACK)
#: Modes whose messages are published in staging order per key (one producer group, one
#: relay order); half messages are published when decided, so they carry no key.
KEYED_MODES = (OUTBOX, OUTBOX_ROLLBACK, LOCAL, LOCAL_ROLLBACK)
FROZEN_SHARE = 0.06


def plan(scenario: Scenario, index: int, message_id: str) -> Operation:
    """The transfer number ``index`` of the run (same seed, same transfer)."""
    rng = random.Random(f"{scenario.seed}:{index}")
    modes = [mode for mode, _, _ in MODES]
    mode = rng.choices(modes, weights=[weight for _, weight, _ in MODES])[0]
    commits = next(commit for name, _, commit in MODES if name == mode)
    transfer_id = f"t{index}-{scenario.run}"
    if mode == POISON:
        payer = payee = "-"
        amount = 0
    else:
        payer = rng.choice(PAYERS)
        others = [account for account in PAYERS if account != payer]
        frozen = rng.random() < FROZEN_SHARE
        payee = rng.choice(FROZEN) if frozen else rng.choice(others)
        amount = rng.randint(1, 100)
    return Operation(
        index=index,
        transfer_id=transfer_id,
        message_id=message_id,
        mode=mode,
        payer=payer,
        payee=payee,
        amount=amount,
        key=payer if mode in KEYED_MODES else None,
        commits=commits,
        invoked_at=time.time(),
    )


def body_of(operation: Operation) -> bytes:
    """The credit message's body; a poison message's is not even UTF-8."""
    if operation.mode == POISON:
        return b"\xff\xfepoison " + operation.transfer_id.encode()
    return json.dumps(
        {
            "transfer": operation.transfer_id,
            "index": operation.index,
            "payer": operation.payer,
            "payee": operation.payee,
            "amount": operation.amount,
        }
    ).encode()
