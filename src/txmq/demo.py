"""``txmq demo``: every flow of txmq, each checked against what happened, on each broker.

Two small services share one database here, for a short demo (in production each has its
own), and run once per broker:

- The *shop* (producer group ``shop-<run>``) tells *shipping* about its orders through every
  producer flow: an outbox message staged in a transaction that commits and one in a
  transaction that rolls back; half messages whose local transaction answers COMMIT,
  ROLLBACK and UNKNOWN (the check-back then resolves it by looking for the order); and a
  self-answering local transaction, whose transaction marker would answer a check-back.
- The *bank* debits the payer and stages a ``transfers.requested`` message in the same
  transaction (outbox). The *crediting* service credits the payee, exactly once per message
  thanks to its inbox, even when the message arrives twice. One credit fails once (a flaky
  dependency) and succeeds on the retry the broker delays. One payee account is frozen:
  crediting it is rejected, the message goes to the dead-letter queue and a compensation
  event goes back to the bank, whose handler refunds the payer. At the end the books balance.

Each report line is derived from what was observed (record states, inbox rows, the DLQ's
letters, what the handlers saw), never printed on faith; a check that fails is a cross and
makes :func:`run` return 1.

    txmq demo                     # SQLite in a temporary directory, RabbitMQ and Kafka
    txmq demo --broker rabbitmq://guest:guest@127.0.0.1:5672/ --database sqlite:///demo.db

``txmq demo --crash`` (:func:`run_crash`) runs the bank-transfer workload of ``txmq chaos``
instead, SIGKILLs the relay and the consumer midway, starts them again, and checks the
invariants.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from txmq import (
    Adapter,
    CheckBackPolicy,
    Compensation,
    ConfigurationError,
    Consumer,
    DeadLetters,
    LocalTransactionState,
    Message,
    OutboxTables,
    Producer,
    RecordNotFound,
    RecordState,
    Reject,
    RetryPolicy,
    TxmqError,
    attempt_of,
    connect,
    make_inbox_table,
    make_outbox_tables,
    redact,
)
from txmq.config import describe
from txmq.database import open_engine
from txmq.sql.tables import STATUS_DEAD, STATUS_DONE
from txmq.wire import HEADER_PRODUCER_GROUP

if TYPE_CHECKING:
    from txmq.testing.provision import Broker

Say = Callable[[str], object]

OUTBOX_COMMIT = "outbox commit"
OUTBOX_ROLLBACK = "outbox rollback"
HALF_COMMIT = "half message COMMIT"
HALF_ROLLBACK = "half message ROLLBACK"
HALF_UNKNOWN = "half message UNKNOWN"
LOCAL_TRANSACTION = "self-answering local transaction"
RETRY = "retry"
DEAD_LETTER = "dead letter"
COMPENSATION = "compensation"
DUPLICATE = "duplicate suppressed"
BOOKS = "books balance"
#: Every scenario, in the order of the report.
SCENARIOS = (
    OUTBOX_COMMIT,
    OUTBOX_ROLLBACK,
    HALF_COMMIT,
    HALF_ROLLBACK,
    HALF_UNKNOWN,
    LOCAL_TRANSACTION,
    RETRY,
    DEAD_LETTER,
    COMPENSATION,
    DUPLICATE,
    BOOKS,
)

#: What ``txmq demo`` runs on when no broker is given: the brokers ``txmq brokers up`` starts.
DEFAULT_BROKERS: tuple[Broker, ...] = ("rabbitmq", "kafka")

OPENING_BALANCES = {"alice": 1000, "bob": 500, "carol": 0, "frozen-dave": 0}
FROZEN = "frozen-dave"
FLAKY_PAYER = "bob"
TRANSFERS = [
    ("alice", "bob", 100),  # delivered a second time: the inbox suppresses the duplicate
    ("bob", "carol", 50),  # the credit fails once, then succeeds on its retry
    ("alice", "frozen-dave", 300),  # rejected: dead-lettered, alice refunded
    ("alice", "carol", 25),
]
RETRY_DELAY = 0.5
#: Short, so the check-back of the UNKNOWN half message comes within a second.
CHECK_IMMUNITY = 0.5
#: Fast polling, so each flow takes a fraction of a second (PostgreSQL relays get NOTIFY).
POLL_INTERVAL = 0.1
#: Generous: a loaded machine is slow, and a wait ends as soon as its condition holds.
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Check:
    """One scenario's verdict on one broker, derived from what was observed.

    Attributes:
        scenario: one of :data:`SCENARIOS`.
        passed: whether what was observed is what the scenario promises.
        detail: what was observed, in a few words.
        seconds: how long the flow took, where that is worth saying.
    """

    scenario: str
    passed: bool
    detail: str
    seconds: float | None = None


@dataclass(frozen=True)
class DemoResult:
    """What one run on one broker observed."""

    balances: dict[str, int]
    total_before: int
    total_after: int
    dead_lettered: int
    retried: int
    duplicates_ignored: int
    refunds: int
    checks: tuple[Check, ...] = ()

    @property
    def balanced(self) -> bool:
        """The total is unchanged and every balance is what the successful transfers make it."""
        return self.total_after == self.total_before and self.balances == expected_balances()

    @property
    def passed(self) -> bool:
        """Every scenario's check passed (the books balance among them)."""
        return bool(self.checks) and all(check.passed for check in self.checks)


def expected_balances() -> dict[str, int]:
    """The balances after every transfer except the one to the frozen account."""
    expected = dict(OPENING_BALANCES)
    for payer, payee, amount in TRANSFERS:
        if payee != FROZEN:
            expected[payer] -= amount
            expected[payee] += amount
    return expected


class Ledger:
    """The accounts table the bank and the crediting service write to."""

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
    """What every flow of one run shares."""

    broker: Adapter
    engine: Engine
    run: str
    orders: Table
    ledger: Ledger
    inbox: Table
    outbox: OutboxTables
    say: Say
    timeout: float

    def inbox_status(self, group: str, message_id: str) -> str | None:
        """The status of ``group``'s inbox row for ``message_id`` (None: no row)."""
        inbox = self.inbox
        query = select(inbox.c.status).where(
            inbox.c.consumer_group == group, inbox.c.message_key == message_id
        )
        with self.engine.connect() as connection:
            status = connection.execute(query).scalar_one_or_none()
        return None if status is None else str(status)

    def record_state(self, producer: Producer, message_id: str) -> RecordState | None:
        """The outbox record's state (None: there is no record)."""
        try:
            return producer.store.get(message_id).state
        except RecordNotFound:
            return None


class _Seen:
    """What a handler saw, per message id, for the checks (handlers run on worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, list[tuple[float, str]]] = {}

    def add(self, message_id: str, event: str) -> None:
        with self._lock:
            self._events.setdefault(message_id, []).append((time.monotonic(), event))

    def events(self, message_id: str) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._events.get(message_id, []))

    def count(self, message_id: str, event: str) -> int:
        return sum(1 for _, seen in self.events(message_id) if seen == event)


def _place_order(session: Session, orders: Table, order_id: int) -> None:
    """The shop's business write, the one the check-back looks for."""
    session.execute(orders.insert().values(id=order_id, item=f"item-{order_id}"))


def _order_exists(engine: Engine, orders: Table, order_id: int) -> bool:
    with engine.connect() as connection:
        found = connection.execute(select(orders.c.id).where(orders.c.id == order_id)).first()
    return found is not None


class _Shop:
    """The shop's producer, its checker, and the shipping consumer of its messages."""

    def __init__(self, scene: _Scene) -> None:
        self.scene = scene
        self.topic = f"orders.placed.{scene.run}"
        #: (message id, check count, answer) of every check-back the checker answered.
        self.asked: list[tuple[str, int, LocalTransactionState]] = []
        self.producer = Producer(
            group=f"shop-{scene.run}",
            engine=scene.engine,
            broker=scene.broker,
            tables=scene.outbox,
            checker=self._check,
            check_policy=CheckBackPolicy(
                immunity=timedelta(seconds=CHECK_IMMUNITY),
                interval=timedelta(seconds=CHECK_IMMUNITY),
            ),
        )
        self.shipping = Consumer(
            broker=scene.broker,
            engine=scene.engine,
            group=f"shipping-{scene.run}",
            inbox=scene.inbox,
            poll_interval=0.2,
        )
        self.seen = _Seen()

        @self.shipping.handler(self.topic)
        def ship(message: Message, session: Session) -> None:
            self.seen.add(message.id, "shipped")

    def _check(self, message: Message, check_count: int) -> LocalTransactionState:
        order_id = json.loads(message.body)["order"]
        found = _order_exists(self.scene.engine, self.scene.orders, order_id)
        state = LocalTransactionState.COMMIT if found else LocalTransactionState.ROLLBACK
        self.asked.append((message.id, check_count, state))
        return state

    def message(self, order_id: int) -> Message:
        # One key: the shop's messages are delivered in the order they were decided.
        return Message(self.topic, json.dumps({"order": order_id}).encode(), key="shop")

    def shipped(self, message_id: str) -> bool:
        """The shipping handler committed for it: its inbox row says done."""
        return self.scene.inbox_status(self.shipping.group, message_id) == STATUS_DONE


@dataclass(frozen=True)
class _Discarded:
    """A flow whose message must never be delivered; judged once later messages were.

    Attributes:
        message_id: the discarded message.
        happened: what the flow saw, e.g. ``"ROLLBACK -> ROLLED_BACK"``.
        ok: whether that is what the flow promises.
    """

    message_id: str
    happened: str
    ok: bool


def _shop_flows(scene: _Scene, shop: _Shop) -> list[Check]:
    """The producer's flows, each with its check, in the order of :data:`SCENARIOS`."""
    checks: dict[str, Check] = {}
    discarded: dict[str, _Discarded] = {}
    flows: list[tuple[str, Callable[[_Scene, _Shop, int], Check | _Discarded]]] = [
        (OUTBOX_ROLLBACK, _outbox_rollback),
        (OUTBOX_COMMIT, _outbox_commit),
        (HALF_ROLLBACK, _half_rollback),
        (HALF_COMMIT, _half_commit),
        (HALF_UNKNOWN, _half_unknown),
        (LOCAL_TRANSACTION, _local_transaction),
    ]
    for order_id, (scenario, flow) in enumerate(flows, start=1):
        try:
            outcome = flow(scene, shop, order_id)
        except Exception as exc:  # a flow that breaks is a failed check, not a crashed demo
            checks[scenario] = Check(scenario, False, f"raised {describe(exc)}")
            continue
        if isinstance(outcome, Check):
            checks[scenario] = outcome
        else:
            discarded[scenario] = outcome
    # The shop's messages share one key and every later one was waited for: a discarded
    # message that had been published anyway would have been shipped before them.
    for scenario, flow_outcome in discarded.items():
        shipped = shop.seen.count(flow_outcome.message_id, "shipped")
        row = scene.inbox_status(shop.shipping.group, flow_outcome.message_id)
        never = shipped == 0 and row is None
        seen = "never shipped" if never else f"SHIPPED {shipped} time(s), inbox row {row}"
        passed = flow_outcome.ok and never
        checks[scenario] = Check(scenario, passed, f"{flow_outcome.happened}, {seen}")
    return [checks[scenario] for scenario in SCENARIOS if scenario in checks]


def _delivery_check(
    scenario: str, scene: _Scene, shop: _Shop, message_id: str, *, since: float, happened: str
) -> Check:
    """The check of a flow that must deliver its message once: wait until its record is SENT
    and shipping committed it, then say so (``happened``: what the flow saw before)."""
    producer = shop.producer
    delivered = _wait_until(
        lambda: (
            shop.shipped(message_id)
            and scene.record_state(producer, message_id) is RecordState.SENT
        ),
        scene.timeout,
    )
    after = time.monotonic() - since
    times = shop.seen.count(message_id, "shipped")
    state = scene.record_state(producer, message_id)
    if not delivered:
        detail = f"{happened} -> {state}, shipped {times} time(s) within {scene.timeout:.0f} s"
        return Check(scenario, False, detail)
    if not happened.endswith(RecordState.SENT):
        happened = f"{happened} -> {RecordState.SENT}"
    shipped = "shipped once" if times == 1 else f"SHIPPED {times} TIMES"
    return Check(scenario, times == 1, f"{happened}, {shipped} in {after:.1f} s", after)


def _outbox_commit(scene: _Scene, shop: _Shop, order_id: int) -> Check:
    message = shop.message(order_id)
    with Session(scene.engine) as session, session.begin():
        _place_order(session, scene.orders, order_id)
        shop.producer.stage(session, message)
    started = time.monotonic()
    scene.say(f"order {order_id}: placed and its message staged; committed")
    return _delivery_check(
        OUTBOX_COMMIT, scene, shop, message.id, since=started, happened="committed"
    )


def _outbox_rollback(scene: _Scene, shop: _Shop, order_id: int) -> _Discarded:
    message = shop.message(order_id)
    with Session(scene.engine) as session:
        session.begin()
        _place_order(session, scene.orders, order_id)
        shop.producer.stage(session, message)
        session.rollback()  # the payment was declined
    scene.say(f"order {order_id}: placed and its message staged; rolled back")
    state = scene.record_state(shop.producer, message.id)
    happened = f"rolled back -> {'no record' if state is None else state}"
    return _Discarded(message.id, happened, ok=state is None)


def _half_commit(scene: _Scene, shop: _Shop, order_id: int) -> Check:
    def execute(message: Message, order: int) -> LocalTransactionState:
        with Session(scene.engine) as session, session.begin():
            _place_order(session, scene.orders, order)
        return LocalTransactionState.COMMIT

    message = shop.message(order_id)
    started = time.monotonic()
    result = shop.producer.send_in_transaction(message, execute, order_id)
    scene.say(f"order {order_id}: half message, local transaction {result.local_state}")
    happened = f"{result.local_state} -> {result.record_state}"
    if result.local_state is not LocalTransactionState.COMMIT or result.record_state not in (
        RecordState.READY,
        RecordState.SENT,
    ):
        return Check(HALF_COMMIT, False, happened)
    return _delivery_check(HALF_COMMIT, scene, shop, message.id, since=started, happened=happened)


def _half_rollback(scene: _Scene, shop: _Shop, order_id: int) -> _Discarded:
    def execute(message: Message, order: int) -> LocalTransactionState:
        return LocalTransactionState.ROLLBACK  # out of stock: no order is written

    message = shop.message(order_id)
    result = shop.producer.send_in_transaction(message, execute, order_id)
    scene.say(f"order {order_id}: half message, local transaction {result.local_state}")
    state = scene.record_state(shop.producer, message.id)
    ok = result.local_state is LocalTransactionState.ROLLBACK and state is RecordState.ROLLED_BACK
    return _Discarded(message.id, f"{result.local_state} -> {state}", ok)


def _half_unknown(scene: _Scene, shop: _Shop, order_id: int) -> Check:
    def execute(message: Message, order: int) -> LocalTransactionState:
        with Session(scene.engine) as session, session.begin():
            _place_order(session, scene.orders, order)
        return LocalTransactionState.UNKNOWN  # committed, but the answer was lost

    message = shop.message(order_id)
    started = time.monotonic()
    result = shop.producer.send_in_transaction(message, execute, order_id)
    scene.say(f"order {order_id}: half message, local transaction {result.local_state}")
    if result.record_state is not RecordState.PREPARED:
        return Check(HALF_UNKNOWN, False, f"{result.local_state} -> {result.record_state}")
    producer = shop.producer
    decided = _wait_until(
        lambda: scene.record_state(producer, message.id) is not RecordState.PREPARED,
        scene.timeout,
    )
    decided_after = time.monotonic() - started
    answers = [(count, state) for mid, count, state in shop.asked if mid == message.id]
    if not decided or not answers:
        state = scene.record_state(producer, message.id)
        return Check(HALF_UNKNOWN, False, f"{result.local_state} -> still {state}, no check-back")
    count, answer = answers[-1]
    happened = f"{result.local_state} -> check-back {count}: {answer} after {decided_after:.1f} s"
    if answer is not LocalTransactionState.COMMIT:
        state = scene.record_state(producer, message.id)
        return Check(HALF_UNKNOWN, False, f"{happened} -> {state} (the order was committed)")
    check = _delivery_check(HALF_UNKNOWN, scene, shop, message.id, since=started, happened=happened)
    return Check(check.scenario, check.passed, check.detail, decided_after)


def _local_transaction(scene: _Scene, shop: _Shop, order_id: int) -> Check:
    message = shop.message(order_id)
    started = time.monotonic()
    result = shop.producer.send_in_local_transaction(
        message, lambda session: _place_order(session, scene.orders, order_id)
    )
    scene.say(f"order {order_id}: placed in txmq's local transaction, with its marker")
    markers = scene.outbox.markers
    with scene.engine.connect() as connection:
        marker = connection.execute(
            select(markers.c.outcome).where(markers.c.tx_key == message.id)
        ).scalar_one_or_none()
    asked = any(mid == message.id for mid, _, _ in shop.asked)
    happened = f"marker {marker}, no checker -> {result.record_state}"
    if (
        asked
        or marker != LocalTransactionState.COMMIT.value
        or result.record_state
        not in (
            RecordState.READY,
            RecordState.SENT,
        )
    ):
        return Check(
            LOCAL_TRANSACTION, False, f"{happened}, checker {'ASKED' if asked else 'not asked'}"
        )
    return _delivery_check(
        LOCAL_TRANSACTION, scene, shop, message.id, since=started, happened=happened
    )


class _Bank:
    """The bank's producer, the crediting consumer, and the bank's refund handler."""

    def __init__(self, scene: _Scene) -> None:
        self.scene = scene
        self.topic = f"transfers.requested.{scene.run}"
        self.producer = Producer(
            group=f"bank-{scene.run}", engine=scene.engine, broker=scene.broker, tables=scene.outbox
        )
        self.seen = _Seen()
        self.crediting = Consumer(
            broker=scene.broker,
            engine=scene.engine,
            group=f"crediting-{scene.run}",
            inbox=scene.inbox,
            retry=RetryPolicy(delays=(RETRY_DELAY,)),
            compensate=True,
            poll_interval=0.2,
        )
        self.refunds = Consumer(
            broker=scene.broker,
            engine=scene.engine,
            group=f"refunds-{scene.run}",
            inbox=scene.inbox,
            poll_interval=0.2,
        )

        @self.crediting.handler(self.topic)
        def credit(message: Message, session: Session) -> None:
            transfer = json.loads(message.body)
            attempt = attempt_of(message)
            if transfer["payer"] == FLAKY_PAYER and attempt == 1:
                self.seen.add(message.id, "timed out")
                raise ConnectionError("fraud-check service timed out")  # retried later
            if scene.ledger.is_frozen(session, transfer["payee"]):
                self.seen.add(message.id, "rejected")
                raise Reject(f"account {transfer['payee']} is frozen")  # dead-lettered at once
            scene.ledger.move(session, transfer["payee"], transfer["amount"])
            self.seen.add(message.id, "credited")
            scene.say(
                f"credited {transfer['amount']:>4} to {transfer['payee']} (attempt {attempt})"
            )

        @self.refunds.compensation(self.producer.group)
        def refund(compensation: Compensation, session: Session) -> None:
            transfer = json.loads(compensation.body)
            scene.ledger.move(session, transfer["payer"], transfer["amount"])
            self.seen.add(compensation.original_id, "refunded")
            why = compensation.error_message
            scene.say(f"refunded {transfer['amount']:>4} to {transfer['payer']}: {why}")

    def transfer(self, payer: str, payee: str, amount: int) -> Message:
        """Debit ``payer`` and stage the transfer, in one transaction."""
        body = json.dumps({"payer": payer, "payee": payee, "amount": amount}).encode()
        message = Message(self.topic, body, key=payer)
        with Session(self.scene.engine) as session, session.begin():
            self.scene.ledger.move(session, payer, -amount)
            self.producer.stage(session, message)
        self.scene.say(f"debited {amount:>4} from {payer}; transfer to {payee} staged")
        return message


def _bank_flows(scene: _Scene, bank: _Bank) -> list[Check]:
    """The transfers; the checks of the consumer's flows and of the books."""
    sent = {
        (payer, payee): bank.transfer(payer, payee, amount) for payer, payee, amount in TRANSFERS
    }
    first = sent[TRANSFERS[0][0], TRANSFERS[0][1]]
    # Deliver the first transfer again, as after a relay crash between publish and mark.
    with scene.broker.publisher() as publisher:
        publisher.publish([first.with_headers(**{HEADER_PRODUCER_GROUP: bank.producer.group})])
    crediting, refunds = bank.crediting, bank.refunds
    _wait_until(
        lambda: (
            crediting.stats.processed == 3
            and crediting.stats.dead_lettered == 1
            and crediting.stats.duplicates >= 1
            and refunds.stats.processed == 1
        ),
        scene.timeout,
    )
    flaky = next(m for (payer, _), m in sent.items() if payer == FLAKY_PAYER)
    frozen = next(m for (_, payee), m in sent.items() if payee == FROZEN)
    checks = []
    looks: list[tuple[str, Callable[[], Check]]] = [
        (RETRY, lambda: _retry_check(bank, flaky)),
        (DEAD_LETTER, lambda: _dead_letter_check(scene, bank, frozen)),
        (COMPENSATION, lambda: _compensation_check(bank, frozen)),
        (DUPLICATE, lambda: _duplicate_check(bank, first)),
    ]
    for scenario, check in looks:
        try:
            checks.append(check())
        except Exception as exc:
            checks.append(Check(scenario, False, f"raised {describe(exc)}"))
    return checks


def _retry_check(bank: _Bank, message: Message) -> Check:
    events = bank.seen.events(message.id)
    kinds = [kind for _, kind in events]
    if kinds != ["timed out", "credited"]:
        return Check(
            RETRY, False, f"the handler saw {kinds or 'nothing'}, not a failure then a credit"
        )
    (failed_at, _), (credited_at, _) = events
    after = credited_at - failed_at
    retried = bank.crediting.stats.retried
    detail = f"attempt 1 failed, the broker redelivered it after {after:.1f} s, credited"
    if retried != 1:
        return Check(RETRY, False, f"{detail}, but {retried} retry copies were sent")
    return Check(RETRY, True, f"{detail} on attempt 2", after)


def _dead_letter_check(scene: _Scene, bank: _Bank, message: Message) -> Check:
    with DeadLetters(scene.broker, group=bank.crediting.group, topic=bank.topic) as dlq:
        letter = dlq.show(message.id)
        queue = dlq.queue
    row = scene.inbox_status(bank.crediting.group, message.id)
    if letter is None:
        return Check(DEAD_LETTER, False, f"NOT in {queue}, inbox row {row}")
    credited = bank.seen.count(message.id, "credited")
    detail = (
        f"rejected -> DLQ: {letter.error_type.rpartition('.')[2]} "
        f"'{letter.error_message}', {letter.attempts} attempt"
    )
    if row != STATUS_DEAD or credited or letter.attempts != 1:
        return Check(DEAD_LETTER, False, f"{detail}, inbox row {row}, credited {credited} times")
    return Check(DEAD_LETTER, True, detail)


def _compensation_check(bank: _Bank, message: Message) -> Check:
    refunded = bank.seen.events(message.id)
    rejected_at = [at for at, kind in refunded if kind == "rejected"]
    refunded_at = [at for at, kind in refunded if kind == "refunded"]
    if len(refunded_at) != 1 or not rejected_at:
        return Check(COMPENSATION, False, f"refund ran {len(refunded_at)} times, not once")
    after = refunded_at[0] - rejected_at[0]
    transfer = json.loads(message.body)
    detail = (
        f"the bank refunded {transfer['amount']} to {transfer['payer']} "
        f"{after:.1f} s after the rejection"
    )
    return Check(COMPENSATION, True, detail, after)


def _duplicate_check(bank: _Bank, message: Message) -> Check:
    credited = bank.seen.count(message.id, "credited")
    duplicates = bank.crediting.stats.duplicates
    times = "once" if credited == 1 else f"{credited} TIMES"
    detail = f"delivered twice, credited {times}: the inbox skipped {duplicates} duplicate"
    return Check(DUPLICATE, credited == 1 and duplicates >= 1, detail)


def _books_check(balances: dict[str, int]) -> Check:
    before, after = sum(OPENING_BALANCES.values()), sum(balances.values())
    listed = ", ".join(f"{owner} {balance}" for owner, balance in balances.items())
    balanced = before == after and balances == expected_balances()
    if balanced:
        return Check(BOOKS, True, f"total {before} before and after: {listed}")
    expected = ", ".join(f"{owner} {b}" for owner, b in expected_balances().items())
    detail = f"total {before} before, {after} after: {listed} (expected {expected})"
    return Check(BOOKS, False, detail)


def run_demo(
    broker: Adapter, engine: Engine, *, timeout: float = DEFAULT_TIMEOUT, echo: bool = True
) -> DemoResult:
    """Run every scenario once on ``broker`` and ``engine``; return what was observed.

    The demo's tables get names of their own (``demo_<run>_...``) and are dropped at the
    end; its topics and groups are named after the run too.

    Args:
        timeout: the longest any one flow is waited for.
        echo: print what happens as it happens.

    Raises:
        TxmqError / SQLAlchemyError: the tables could not be created or the services not
            started. A flow that fails later is a failed :class:`Check`, not an error.
    """
    say: Say = print if echo else _silent
    run = uuid.uuid4().hex[:6]
    metadata = MetaData()
    orders = Table(
        f"demo_{run}_orders",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("item", String(40), nullable=False),
    )
    scene = _Scene(
        broker=broker,
        engine=engine,
        run=run,
        orders=orders,
        ledger=Ledger(metadata, f"demo_{run}_accounts"),
        inbox=make_inbox_table(metadata, f"demo_{run}_inbox"),
        outbox=make_outbox_tables(metadata, prefix=f"demo_{run}_"),
        say=say,
        timeout=timeout,
    )
    metadata.create_all(engine)
    try:
        scene.ledger.open(engine)
        total_before = sum(OPENING_BALANCES.values())
        say(f"broker {broker.settings.redacted_url()}, database {_database_name(engine)}")
        shop, bank = _Shop(scene), _Bank(scene)
        with ExitStack() as running:
            for consumer in (shop.shipping, bank.crediting, bank.refunds):
                consumer.start()
                running.callback(consumer.stop)
            for producer in (shop.producer, bank.producer):
                producer.start(check_back_every=POLL_INTERVAL, poll_interval=POLL_INTERVAL)
                running.callback(producer.close)
            checks = _shop_flows(scene, shop)
            say(f"opening balances {OPENING_BALANCES} (total {total_before})")
            try:
                checks += _bank_flows(scene, bank)
            except Exception as exc:  # the transfers could not be made: each check fails
                failed = f"raised {describe(exc)}"
                checks += [
                    Check(s, False, failed) for s in (RETRY, DEAD_LETTER, COMPENSATION, DUPLICATE)
                ]
        balances = scene.ledger.balances(engine)
        say(f"closing balances {balances} (total {sum(balances.values())})")
        checks.append(_books_check(balances))
        return DemoResult(
            balances=balances,
            total_before=total_before,
            total_after=sum(balances.values()),
            dead_lettered=bank.crediting.stats.dead_lettered,
            retried=bank.crediting.stats.retried,
            duplicates_ignored=bank.crediting.stats.duplicates,
            refunds=bank.refunds.stats.processed,
            checks=tuple(checks),
        )
    finally:
        metadata.drop_all(engine)


def _database_name(engine: Engine) -> str:
    return redact(engine.url.render_as_string(hide_password=True))


def _silent(*_: object) -> None:
    pass


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether ``condition`` came true within ``timeout`` seconds (looked at every 50 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@dataclass(frozen=True)
class BrokerRun:
    """One broker's part of the report."""

    system: str
    url: str
    result: DemoResult
    seconds: float

    @property
    def passed(self) -> bool:
        return self.result.passed


def report_lines(runs: Sequence[BrokerRun], database: str) -> list[str]:
    """The report a person reads at a glance: a line per scenario per broker, then a verdict."""
    width = max(len(scenario) for scenario in SCENARIOS)
    lines = [f"txmq demo on {database}"]
    for broker_run in runs:
        lines.append(f"{broker_run.system} ({broker_run.url}), {broker_run.seconds:.1f} s")
        for check in broker_run.result.checks:
            mark = "\N{CHECK MARK}" if check.passed else "\N{BALLOT X}"
            lines.append(f"  {mark} {check.scenario:<{width}}  {check.detail}")
    checks = [check for broker_run in runs for check in broker_run.result.checks]
    failed = sum(1 for check in checks if not check.passed)
    systems = ", ".join(broker_run.system for broker_run in runs)
    if failed or not checks:
        lines.append(f"{failed} of {len(checks)} checks FAILED on {systems}")
    else:
        lines.append(f"all {len(checks)} checks passed on {systems}")
    return lines


def report_document(runs: Sequence[BrokerRun], database: str) -> dict[str, Any]:
    """The ``--json`` document: ``database``, ``brokers``, ``scenarios`` and ``passed``."""
    return {
        "database": database,
        "brokers": [
            {
                "system": broker_run.system,
                "url": broker_run.url,
                "passed": broker_run.passed,
                "seconds": round(broker_run.seconds, 3),
                "balances": broker_run.result.balances,
            }
            for broker_run in runs
        ],
        "scenarios": [
            {"broker": broker_run.system, **asdict(check)}
            for broker_run in runs
            for check in broker_run.result.checks
        ],
        "passed": bool(runs) and all(broker_run.passed for broker_run in runs),
    }


@contextmanager
def _provisioned_brokers(say: Say) -> Iterator[list[str]]:
    """URLs of the brokers ``txmq brokers up`` provisions, started if they do not run yet;
    those started here are stopped again on the way out.

    Raises:
        ProvisionError: a broker could not be started.
    """
    # Imported here: provisioning is test tooling, needed only when no broker is given.
    from txmq.testing import provision

    running = {record.broker for record, alive in provision.status() if alive}
    ours = [broker for broker in DEFAULT_BROKERS if broker not in running]
    if ours:
        say(f"starting {', '.join(ours)} with 'txmq brokers up' (the first time takes minutes)")
    try:
        endpoints = provision.up(brokers=DEFAULT_BROKERS)
        yield [url for url in (endpoints.rabbitmq_url, endpoints.kafka_url) if url is not None]
    finally:
        if ours:
            say(f"stopping {', '.join(ours)}")
            provision.down(ours)


def run_crash(
    brokers: Sequence[str] | None = None,
    database: str | None = None,
    *,
    as_json: bool = False,
    seed: int | None = None,
) -> int:
    """``txmq demo --crash``: transfers made through every producer mode while the relay
    (``txmq worker``) is SIGKILLed between the broker's confirm and marking the batch SENT,
    and then the consumer (``txmq consume``) between its database commit and the ack; each
    is started again. Prints what :mod:`txmq.chaos` prints: nothing lost, nothing applied
    twice (the redelivered copies are stopped by the inbox and counted), nothing from a
    rolled-back transaction delivered, money conserved.

    Args:
        brokers: broker URLs (used as they are), or ``rabbitmq`` / ``kafka`` for a private
            one started as processes; none: a private RabbitMQ, then a private Kafka.
        database: a PostgreSQL URL (tables named after the run, dropped at the end); none:
            a private PostgreSQL started as processes.
        as_json: print the chaos report's JSON document instead.
        seed: replays a run (the moments of the kills and the workload).

    Returns:
        The exit status: 0 when every invariant held on every broker, 1 when one failed, 2
        when it could not run (a bad URL, a database that is not PostgreSQL, a server that
        could not be started); that error is printed on stderr in one line.
    """
    # Imported here: the chaos machinery is needed only with --crash.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from txmq.chaos.report import Report
    from txmq.chaos.runner import run_report
    from txmq.chaos.schedule import CRASH, crash

    say: Say = _silent if as_json else print
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    targets: list[str | None] = list(brokers or []) or [None]
    try:
        if database is not None and make_url(database).get_backend_name() != "postgresql":
            raise ConfigurationError(f"txmq demo --crash needs PostgreSQL, not {redact(database)}")
        reports = [
            run_report(broker, database, name=CRASH, planner=crash, seed=seed, say=say)
            for broker in targets
        ]
    except (TxmqError, SQLAlchemyError, ArgumentError) as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 2
    report = Report(
        schedule=CRASH,
        seed=seed,
        runs=tuple(run for each in reports for run in each.runs),
    )
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(report.summary())
    return 0 if report.passed else 1


def run(
    brokers: Sequence[str] | None = None,
    database: str | None = None,
    *,
    as_json: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """Run the demo on each broker and print the report (or, ``as_json``, one JSON document).

    Args:
        brokers: broker URLs; none: RabbitMQ and Kafka as ``txmq brokers up`` runs them,
            started here if they do not run yet and then stopped again.
        database: SQLAlchemy URL; none: a SQLite file in a temporary directory, removed at
            the end.
        as_json: print :func:`report_document` instead of the narration and the report.
        timeout: the longest any one flow is waited for.

    Returns:
        The exit status: 0 when every check passed on every broker, 1 when one failed, 2
        when the demo could not run (a bad URL, a missing driver, a broker or database that
        cannot be reached, a broker that could not be provisioned); that error is printed
        on stderr in one line.
    """
    say: Say = _silent if as_json else print
    try:
        with ExitStack() as stack:
            urls = list(brokers or []) or stack.enter_context(_provisioned_brokers(say))
            if database is None:
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="txmq-demo-")))
                database = f"sqlite:///{folder / 'demo.db'}"
            engine = open_engine(database)
            stack.callback(engine.dispose)
            adapters = []
            for url in urls:
                adapter = connect(url)
                stack.callback(adapter.close)
                adapters.append(adapter)
            runs = []
            for adapter in adapters:
                started = time.monotonic()
                result = run_demo(adapter, engine, timeout=timeout, echo=not as_json)
                runs.append(
                    BrokerRun(
                        system=adapter.system,
                        url=adapter.settings.redacted_url(),
                        result=result,
                        seconds=time.monotonic() - started,
                    )
                )
    except (TxmqError, SQLAlchemyError) as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 2
    name = redact(database)
    if as_json:
        print(json.dumps(report_document(runs, name), indent=2))
    else:
        print()
        print("\n".join(report_lines(runs, name)))
    return 0 if runs and all(broker_run.passed for broker_run in runs) else 1
