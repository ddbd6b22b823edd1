"""Service A of the chaos run, as a process: ``python -m txmq.chaos.bank``.

It makes transfers until SIGTERM: each debits the payer and sends the credit message in
the same local transaction, by the mode :func:`~txmq.chaos.workload.plan` picks, and records
the operation in the history before and after. It also answers the check-backs of its half
messages (and relays them; ``txmq worker`` relays the outbox group) and refunds the payer
when a compensation event says a credit failed for good. ``TXMQ_CHAOS_KILL`` arms a kill
point (see :mod:`txmq.chaos.scenario`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from datetime import timedelta
from types import FrameType

from sqlalchemy import Connection, Engine, create_engine, select, update
from sqlalchemy.orm import Session

from txmq import (
    Adapter,
    CheckBackPolicy,
    Compensation,
    Consumer,
    LocalTransactionState,
    Message,
    Producer,
    connect,
    new_message_id,
)
from txmq.chaos import workload
from txmq.chaos.history import HistoryWriter, Operation, next_index
from txmq.chaos.scenario import (
    ENV_NO_TRANSFERS,
    KILL_AFTER_LOCAL_COMMIT,
    KILL_IN_EXECUTOR,
    BankTables,
    KillPoint,
    Scenario,
)

log = logging.getLogger("txmq.chaos.bank")

#: Short, so an UNKNOWN half message is decided within seconds; many checks, never parked.
CHECK_POLICY = CheckBackPolicy(
    immunity=timedelta(seconds=1), interval=timedelta(seconds=1), max_checks=10_000
)


class ChosenRollback(Exception):
    """Raised inside a transfer's transaction that the workload chose to roll back."""


class Bank:
    """The producer side of the workload (one instance per process)."""

    def __init__(self, scenario: Scenario, broker: Adapter, engine: Engine) -> None:
        self.scenario = scenario
        self.tables = BankTables(scenario)
        self.engine = engine
        self.kill = KillPoint.from_env()
        self.outbox = Producer(
            group=scenario.outbox_group, engine=engine, broker=broker, tables=self.tables.outbox
        )
        self.half = Producer(
            group=scenario.half_group,
            engine=engine,
            broker=broker,
            tables=self.tables.outbox,
            checker=self._check,
            check_policy=CHECK_POLICY,
            # A restarted bank fences (and so aborts) the Kafka transaction its killed
            # predecessor left open, instead of stalling readers until it times out.
            instance_id=f"chaos-bank-{scenario.run}",
        )
        self.refunds = Consumer(
            broker=broker,
            engine=engine,
            group=scenario.refund_group,
            inbox=self.tables.inbox,
            poll_interval=0.2,
        )
        for group in (scenario.outbox_group, scenario.half_group):
            self.refunds.compensation(group)(self._refund)

    def start(self) -> None:
        self.half.start(check_back_every=0.5)
        self.refunds.start()

    def close(self) -> None:
        self.refunds.stop()
        self.half.close()
        self.outbox.close()

    def _check(self, message: Message, check_count: int) -> LocalTransactionState:
        transfers = self.tables.transfers
        query = select(transfers.c.transfer_id).where(transfers.c.message_id == message.id)
        with self.engine.connect() as connection:
            found = connection.execute(query).first() is not None
        return LocalTransactionState.COMMIT if found else LocalTransactionState.ROLLBACK

    def _refund(self, compensation: Compensation, session: Session) -> None:
        try:
            original = json.loads(compensation.body)
        except ValueError:
            return  # a poison message: nothing was debited, nothing to give back
        accounts = self.tables.accounts
        session.execute(
            update(accounts)
            .where(accounts.c.owner == original["payer"])
            .values(balance=accounts.c.balance + original["amount"])
        )
        session.execute(
            self.tables.refunds.insert().values(
                original_id=compensation.original_id,
                payer=original["payer"],
                amount=original["amount"],
                applied_at=time.time(),
            )
        )

    def _debit(self, connection: Connection | Session, operation: Operation) -> None:
        accounts = self.tables.accounts
        if operation.amount:
            connection.execute(
                update(accounts)
                .where(accounts.c.owner == operation.payer)
                .values(balance=accounts.c.balance - operation.amount)
            )
        connection.execute(
            self.tables.transfers.insert().values(
                transfer_id=operation.transfer_id,
                message_id=operation.message_id,
                mode=operation.mode,
                payer=operation.payer,
                payee=operation.payee,
                amount=operation.amount,
            )
        )

    def transfer(self, operation: Operation) -> None:
        """Make one transfer; what it does depends on its mode (see :mod:`workload`)."""
        message = Message(
            self.scenario.topic,
            workload.body_of(operation),
            key=operation.key,
            id=operation.message_id,
        )
        if operation.mode in workload.HALF_MODES:
            self.half.send_in_transaction(message, self._execute, operation)
            return
        if operation.mode in (workload.LOCAL, workload.LOCAL_ROLLBACK):
            self.outbox.send_in_local_transaction(
                message, lambda session: self._local_work(session, operation)
            )
        else:
            with Session(self.engine) as session, session.begin():
                self._debit(session, operation)
                self.outbox.stage(session, message)
                if not operation.commits:
                    raise ChosenRollback(operation.transfer_id)
        self.kill.reached(KILL_AFTER_LOCAL_COMMIT)

    def _local_work(self, session: Session, operation: Operation) -> None:
        self._debit(session, operation)
        if not operation.commits:
            raise ChosenRollback(operation.transfer_id)

    def _execute(self, message: Message, operation: Operation) -> LocalTransactionState:
        self.kill.reached(KILL_IN_EXECUTOR)
        state = LocalTransactionState
        if operation.mode in (workload.HALF_COMMIT, workload.HALF_UNKNOWN_COMMIT):
            with self.engine.begin() as connection:
                self._debit(connection, operation)
            self.kill.reached(KILL_AFTER_LOCAL_COMMIT)
            return state.COMMIT if operation.mode == workload.HALF_COMMIT else state.UNKNOWN
        return state.ROLLBACK if operation.mode == workload.HALF_ROLLBACK else state.UNKNOWN


def run_bank(scenario: Scenario, stop: threading.Event) -> None:
    """Make transfers at the scenario's rate until ``stop`` is set (with
    ``TXMQ_CHAOS_NO_TRANSFERS`` set, only answer check-backs and refund)."""
    engine = create_engine(scenario.database_url, pool_pre_ping=True)
    broker = connect(scenario.broker_url)
    bank = Bank(scenario, broker, engine)
    history = HistoryWriter(scenario.history_path)
    index = next_index(scenario.history_path)
    pause = 1.0 / scenario.rate
    try:
        bank.start()
        if os.environ.get(ENV_NO_TRANSFERS):
            stop.wait()
        while not stop.is_set():
            operation = workload.plan(scenario, index, new_message_id())
            history.invoke(operation)
            try:
                bank.transfer(operation)
            except ChosenRollback:
                history.complete(index, "failed", "rolled back")
            except Exception as exc:  # an outage: the operation may or may not have committed
                history.complete(index, "unknown", f"{type(exc).__name__}: {exc}"[:300])
                log.warning("transfer %s: %s", operation.transfer_id, exc, exc_info=True)
            else:
                history.complete(index, "ok" if operation.commits else "failed")
            index += 1
            stop.wait(pause)  # the workload's pace, not a synchronisation
    finally:
        bank.close()
        history.close()
        broker.close()
        engine.dispose()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run_bank(Scenario.from_env(), stop)


if __name__ == "__main__":
    main()
