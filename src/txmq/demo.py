"""The bank-transfer demo: money is never lost or invented, on either broker.

The *bank* service debits the payer and stages a ``transfers.requested`` message in the same
database transaction (outbox). A relay publishes it. The *crediting* service credits the
payee, exactly once per message thanks to its inbox, even when the broker redelivers. One
payee account is frozen: crediting it fails for good, the message goes to the dead-letter
queue and a compensation event goes back to the bank, whose compensation handler refunds
the payer. Another credit fails once (a flaky dependency) and succeeds on its retry, which
the broker delays. At the end the books balance.

Both services share one database here, for a short demo; in production each has its own.

    txmq demo --broker rabbitmq://guest:guest@127.0.0.1:5672/ --database sqlite:///demo.db
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    select,
    update,
)
from sqlalchemy.orm import Session

from txmq.adapters import Adapter, connect
from txmq.consumer import (
    Compensation,
    Consumer,
    Reject,
    RetryPolicy,
    attempt_of,
    make_inbox_table,
)
from txmq.message import Message
from txmq.outbox import Producer, make_outbox_tables
from txmq.wire import HEADER_PRODUCER_GROUP

Say = Callable[[str], object]

OPENING_BALANCES = {"alice": 1000, "bob": 500, "carol": 0, "frozen-dave": 0}
TRANSFERS = [
    ("alice", "bob", 100),
    ("bob", "carol", 50),  # the credit fails once, then succeeds on its retry
    ("alice", "frozen-dave", 300),  # fails for good: dead-lettered, alice refunded
    ("alice", "carol", 25),
]


@dataclass(frozen=True)
class DemoResult:
    balances: dict[str, int]
    total_before: int
    total_after: int
    dead_lettered: int
    retried: int
    duplicates_ignored: int
    refunds: int

    @property
    def balanced(self) -> bool:
        """The total is unchanged and every balance is what the successful transfers make it."""
        expected = dict(OPENING_BALANCES)
        for payer, payee, amount in TRANSFERS:
            if payee != FROZEN:
                expected[payer] -= amount
                expected[payee] += amount
        return self.total_after == self.total_before and self.balances == expected


FROZEN = "frozen-dave"


class Ledger:
    """The accounts table both services of the demo write to."""

    def __init__(self, metadata: MetaData, name: str) -> None:
        self.accounts = Table(
            name,
            metadata,
            Column("owner", String(40), primary_key=True),
            Column("balance", Integer, nullable=False),
            Column("frozen", Boolean, nullable=False),
        )

    def open(self, engine: Engine) -> None:
        rows = [
            {"owner": owner, "balance": balance, "frozen": owner == FROZEN}
            for owner, balance in OPENING_BALANCES.items()
        ]
        with engine.begin() as connection:
            connection.execute(self.accounts.insert(), rows)

    def move(self, session: Session, owner: str, amount: int) -> None:
        accounts = self.accounts
        session.execute(
            update(accounts)
            .where(accounts.c.owner == owner)
            .values(balance=accounts.c.balance + amount)
        )

    def is_frozen(self, session: Session, owner: str) -> bool:
        accounts = self.accounts
        query = select(accounts.c.frozen).where(accounts.c.owner == owner)
        return bool(session.execute(query).scalar_one())

    def balances(self, engine: Engine) -> dict[str, int]:
        with engine.connect() as connection:
            rows = connection.execute(select(self.accounts.c.owner, self.accounts.c.balance))
            return {owner: int(balance) for owner, balance in rows}


@dataclass(frozen=True)
class _Scene:
    """What both services of one demo run share."""

    broker: Adapter
    engine: Engine
    ledger: Ledger
    inbox: Table
    run: str
    say: Say


def _crediting(scene: _Scene, topic: str) -> Consumer:
    """The payee's side: credit, once per message; a frozen account is refused for good."""
    consumer = Consumer(
        broker=scene.broker,
        engine=scene.engine,
        group=f"crediting-{scene.run}",
        inbox=scene.inbox,
        retry=RetryPolicy(delays=(1.0,)),
        compensate=True,
        poll_interval=0.2,
    )
    timed_out_once: set[str] = set()

    @consumer.handler(topic)
    def credit(message: Message, session: Session) -> None:
        transfer = json.loads(message.body)
        if transfer["payer"] == "bob" and message.id not in timed_out_once:
            timed_out_once.add(message.id)
            raise ConnectionError("fraud-check service timed out")  # retried after 1 s
        if scene.ledger.is_frozen(session, transfer["payee"]):
            raise Reject(f"account {transfer['payee']} is frozen")  # dead-lettered at once
        scene.ledger.move(session, transfer["payee"], transfer["amount"])
        attempt = attempt_of(message)
        scene.say(f"  credited {transfer['amount']:>4} to {transfer['payee']} (attempt {attempt})")

    return consumer


def _refunds(scene: _Scene, bank_group: str) -> Consumer:
    """The bank's compensation handler: refund the payer of a transfer that failed for good."""
    consumer = Consumer(
        broker=scene.broker,
        engine=scene.engine,
        group=f"refunds-{scene.run}",
        inbox=scene.inbox,
        poll_interval=0.2,
    )

    @consumer.compensation(bank_group)
    def refund(compensation: Compensation, session: Session) -> None:
        transfer = json.loads(compensation.body)
        scene.ledger.move(session, transfer["payer"], transfer["amount"])
        why = compensation.error_message
        scene.say(f"  refunded {transfer['amount']:>4} to {transfer['payer']}: {why}")

    return consumer


def run_demo(
    broker: Adapter, engine: Engine, *, timeout: float = 120.0, echo: bool = True
) -> DemoResult:
    """Run the scenario once on ``broker`` and ``engine``; return what happened."""
    say: Say = print if echo else _silent
    run = uuid.uuid4().hex[:6]
    metadata = MetaData()
    ledger = Ledger(metadata, f"demo_{run}_accounts")
    inbox = make_inbox_table(metadata, f"demo_{run}_inbox")
    outbox = make_outbox_tables(metadata, prefix=f"demo_{run}_")
    metadata.create_all(engine)
    topic, bank_group = f"transfers.requested.{run}", f"bank-{run}"
    try:
        ledger.open(engine)
        total_before = sum(OPENING_BALANCES.values())
        say(f"broker {broker.settings.redacted_url()}, database {engine.url.render_as_string()}")
        say(f"opening balances {OPENING_BALANCES} (total {total_before})")
        scene = _Scene(broker, engine, ledger, inbox, run, say)
        crediting = _crediting(scene, topic)
        refunds = _refunds(scene, bank_group)
        bank = Producer(group=bank_group, engine=engine, broker=broker, tables=outbox)
        crediting.start()
        refunds.start()
        bank.start()
        try:
            first = None
            for payer, payee, amount in TRANSFERS:
                body = json.dumps({"payer": payer, "payee": payee, "amount": amount}).encode()
                message = Message(topic, body, key=payer)
                with Session(engine) as session, session.begin():
                    ledger.move(session, payer, -amount)
                    bank.stage(session, message)  # atomic with the debit
                say(f"debited {amount:>4} from {payer}; transfer to {payee} staged")
                first = first or message
            assert first is not None
            # Deliver the first transfer twice, as after a relay crash: the inbox ignores it.
            with broker.publisher() as publisher:
                publisher.publish([first.with_headers(**{HEADER_PRODUCER_GROUP: bank_group})])
            _wait_until(
                lambda: (
                    crediting.stats.processed == 3
                    and crediting.stats.dead_lettered == 1
                    and crediting.stats.duplicates >= 1
                    and refunds.stats.processed == 1
                ),
                timeout,
            )
        finally:
            bank.close()
            crediting.stop()
            refunds.stop()
        balances = ledger.balances(engine)
        result = DemoResult(
            balances=balances,
            total_before=total_before,
            total_after=sum(balances.values()),
            dead_lettered=crediting.stats.dead_lettered,
            retried=crediting.stats.retried,
            duplicates_ignored=crediting.stats.duplicates,
            refunds=refunds.stats.processed,
        )
        say(f"closing balances {result.balances} (total {result.total_after})")
        verdict = "the books balance" if result.balanced else "THE BOOKS DO NOT BALANCE"
        say(
            f"retried {result.retried}, dead-lettered {result.dead_lettered}, duplicates "
            f"ignored {result.duplicates_ignored}, refunds {result.refunds}: {verdict}"
        )
        return result
    finally:
        metadata.drop_all(engine)


def _silent(*_: object) -> None:
    pass


def _wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def main(broker_url: str | None = None, database_url: str | None = None) -> bool:
    """Run the demo; True if the books balance."""
    broker = connect(broker_url)
    engine = create_engine(database_url or "sqlite:///txmq-demo.db")
    try:
        return run_demo(broker, engine).balanced
    finally:
        broker.close()
        engine.dispose()
