"""Service B of the chaos run: ``txmq consume txmq.chaos.credit:consumer``.

Its handler credits the payee, in one inbox-protected transaction with a row in the credits
table (the checker's record of what was applied, in the order it was applied). Crediting a
frozen account fails on every attempt: after its retry the message is dead-lettered and a
compensation event goes back to the bank. A poison message fails to decode and is
dead-lettered at once. ``TXMQ_CHAOS_KILL`` arms a kill point: inside the handler's
transaction (before the DB commit) or right after the commit, before the broker hears of it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, event, update
from sqlalchemy.orm import Session, sessionmaker

from txmq import Consumer, Message, RetryPolicy, attempt_of
from txmq.chaos.history import DeliveryLog
from txmq.chaos.scenario import (
    FROZEN,
    KILL_AFTER_DB_COMMIT,
    KILL_BEFORE_DB_COMMIT,
    BankTables,
    KillPoint,
    Scenario,
)

#: How often the consumer writes down how many duplicates its inbox stopped.
DUPLICATES_EVERY = 0.5

#: One retry, soon: a frozen account's credit reaches the DLQ within a second or so.
RETRY = RetryPolicy(delays=(0.5,), non_retryable=(ValueError,))


class AccountFrozen(Exception):
    """The payee's account takes no credits (a failure that retrying does not cure)."""


def consumer() -> Consumer:
    """The crediting consumer of the scenario named by ``TXMQ_CHAOS_SCENARIO``.

    Raises:
        ConfigurationError: no scenario, or a malformed ``TXMQ_CHAOS_KILL``.
    """
    scenario = Scenario.from_env()
    tables = BankTables(scenario)
    kill = KillPoint.from_env()
    engine = create_engine(scenario.database_url, pool_pre_ping=True)
    deliveries = DeliveryLog(scenario.deliveries_path(os.getpid()))
    credit_consumer = Consumer(
        broker=scenario.broker_url,
        engine=engine,
        group=scenario.credit_group,
        inbox=tables.inbox,
        retry=RETRY,
        compensate=True,
        # A session that owns its transaction, so that "after its commit" can be observed.
        session_factory=sessionmaker(engine),
        poll_interval=0.2,
    )

    threading.Thread(
        target=_count_duplicates,
        args=(credit_consumer, scenario.duplicates_path(os.getpid())),
        name="chaos-duplicates",
        daemon=True,
    ).start()

    def die_after_commit(session: Session) -> None:
        kill.reached(KILL_AFTER_DB_COMMIT)

    @credit_consumer.handler(scenario.topic)
    def credit(message: Message, session: Session) -> None:
        deliveries.add(message.id, attempt_of(message))
        transfer = json.loads(message.body)  # a poison message raises ValueError: DLQ
        if transfer["payee"] in FROZEN:
            raise AccountFrozen(transfer["payee"])
        accounts = tables.accounts
        session.execute(
            update(accounts)
            .where(accounts.c.owner == transfer["payee"])
            .values(balance=accounts.c.balance + transfer["amount"])
        )
        session.execute(
            tables.credits.insert().values(
                message_id=message.id,
                key=message.key,
                seq=transfer["index"],
                payee=transfer["payee"],
                amount=transfer["amount"],
                applied_at=time.time(),
            )
        )
        session.flush()
        kill.reached(KILL_BEFORE_DB_COMMIT)
        if kill.point == KILL_AFTER_DB_COMMIT:
            event.listen(session, "after_commit", die_after_commit, once=True)

    return credit_consumer


def _count_duplicates(consumer: Consumer, path: Path) -> None:
    """Keep ``path`` holding the consumer's inbox duplicates (a SIGKILL loses at most the
    last :data:`DUPLICATES_EVERY` seconds of them)."""
    written = -1
    while True:
        duplicates = consumer.stats.duplicates
        if duplicates != written:
            path.write_text(str(duplicates), encoding="utf-8")
            written = duplicates
        time.sleep(DUPLICATES_EVERY)  # a sampling period, not a synchronisation
