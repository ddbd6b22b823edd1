"""Barrier-safe saga participants on real brokers and PostgreSQL: a duplicate command is
applied once, a compensation before its action is empty and blocks the late action, a
failed action is rolled back and its compensation is empty."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, func, select
from sqlalchemy.orm import Session

import txmq
from txmq.saga import SagaCommand, SagaParticipant, StepFailed, make_barrier_table
from txmq.saga.commands import command_message, decode_object
from txmq.testing import wait_for
from txmq.wire import HEADER_SAGA_OP, HEADER_SAGA_OUTCOME

pytestmark = [pytest.mark.broker, pytest.mark.database]


@dataclass
class Rig:
    engine: Engine
    charges: Table
    charge_topic: str
    refund_topic: str
    reply_topic: str
    driver: txmq.Producer
    replies: list[txmq.Message] = field(default_factory=list)
    refunds_run: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, saga_id: str, op: str, amount: int = 10) -> None:
        topic = self.charge_topic if op == "action" else self.refund_topic
        message = command_message(
            topic=topic,
            saga_id=saga_id,
            saga_name="order",
            step="payment",
            op=op,
            data={"amount": amount},
            reply_to=self.reply_topic,
        )
        with Session(self.engine) as session, session.begin():
            self.driver.stage(session, message)

    def replies_of(self, saga_id: str) -> list[tuple[str, str, dict[str, object]]]:
        with self.lock:
            return [
                (m.headers[HEADER_SAGA_OP], m.headers[HEADER_SAGA_OUTCOME], decode_object(m))
                for m in self.replies
                if m.key == saga_id
            ]

    def charged(self, saga_id: str) -> int:
        with self.engine.connect() as connection:
            query = select(func.coalesce(func.sum(self.charges.c.amount), 0)).where(
                self.charges.c.saga_id == saga_id
            )
            return int(connection.execute(query).scalar_one())


@pytest.fixture
def rig(broker_url: str, txmq_engine: Engine, unique: Callable[[str], str]) -> Iterator[Rig]:
    metadata = MetaData()
    charges = Table(
        "charges",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("saga_id", String(64), nullable=False),
        Column("amount", Integer, nullable=False),
    )
    barrier = make_barrier_table(metadata)
    metadata.create_all(txmq_engine)
    broker = txmq.connect(broker_url)
    rig = Rig(
        engine=txmq_engine,
        charges=charges,
        charge_topic=unique("payment.charge"),
        refund_topic=unique("payment.refund"),
        reply_topic=unique("order.replies"),
        driver=txmq.Producer(group=unique("orchestrator"), engine=txmq_engine, broker=broker),
    )
    payments = txmq.Consumer(broker=broker, engine=txmq_engine, group=unique("payment"))
    replier = txmq.Producer(group=unique("payment"), engine=txmq_engine, broker=broker)
    participant = SagaParticipant(consumer=payments, producer=replier, barrier=barrier)

    @participant.action(rig.charge_topic)
    def charge(command: SagaCommand, session: Session) -> dict[str, int]:
        amount = int(command.data["amount"])
        session.execute(charges.insert().values(saga_id=command.saga_id, amount=amount))
        if amount < 0:
            raise StepFailed("a negative amount")
        return {"charged": amount}

    @participant.compensation(rig.refund_topic)
    def refund(command: SagaCommand, session: Session) -> None:
        with rig.lock:
            rig.refunds_run.append(command.saga_id)
        session.execute(charges.delete().where(charges.c.saga_id == command.saga_id))

    collector = txmq.Consumer(broker=broker, engine=txmq_engine, group=unique("orchestrator"))

    @collector.handler(rig.reply_topic)
    def on_reply(message: txmq.Message, session: Session) -> None:
        with rig.lock:
            rig.replies.append(message)

    payments.start()
    collector.start()
    rig.driver.start()
    replier.start()
    try:
        yield rig
    finally:
        payments.stop()
        collector.stop()
        rig.driver.close()
        replier.close()
        broker.close()


def test_a_duplicate_command_is_applied_once_and_answered_again(rig: Rig) -> None:
    rig.send("saga-dup", "action", 25)
    wait_for(lambda: len(rig.replies_of("saga-dup")) == 1, what="the first reply")
    rig.send("saga-dup", "action", 25)
    wait_for(lambda: len(rig.replies_of("saga-dup")) == 2, what="the duplicate's reply")
    assert rig.charged("saga-dup") == 25
    expected = ("action", "success", {"result": {"charged": 25}, "error": None})
    assert rig.replies_of("saga-dup") == [expected, expected]


def test_a_compensation_before_its_action_is_empty_and_blocks_the_late_action(rig: Rig) -> None:
    rig.send("saga-hang", "compensation")
    wait_for(lambda: rig.replies_of("saga-hang"), what="the compensation's reply")
    rig.send("saga-hang", "action", 40)
    # The late action sends no reply (the saga has moved on): wait for its inbox row.
    wait_for(lambda: _consumed(rig, rig.charge_topic) == 1, what="the late action consumed")
    assert rig.charged("saga-hang") == 0
    assert rig.refunds_run == []
    assert rig.replies_of("saga-hang") == [
        ("compensation", "success", {"result": {}, "error": None})
    ]


def test_a_failed_action_is_rolled_back_and_its_compensation_is_empty(rig: Rig) -> None:
    rig.send("saga-fail", "action", -5)
    wait_for(lambda: rig.replies_of("saga-fail"), what="the failure reply")
    assert rig.replies_of("saga-fail") == [
        ("action", "failure", {"result": {}, "error": "a negative amount"})
    ]
    assert rig.charged("saga-fail") == 0
    rig.send("saga-fail", "compensation")
    wait_for(lambda: len(rig.replies_of("saga-fail")) == 2, what="the compensation's reply")
    assert rig.refunds_run == []


def test_an_applied_action_is_compensated_once(rig: Rig) -> None:
    rig.send("saga-undo", "action", 30)
    wait_for(lambda: rig.replies_of("saga-undo"), what="the action's reply")
    assert rig.charged("saga-undo") == 30
    rig.send("saga-undo", "compensation")
    rig.send("saga-undo", "compensation")
    wait_for(lambda: len(rig.replies_of("saga-undo")) == 3, what="both compensation replies")
    assert rig.charged("saga-undo") == 0
    assert rig.refunds_run == ["saga-undo"]
    assert [op for op, _, _ in rig.replies_of("saga-undo")] == [
        "action",
        "compensation",
        "compensation",
    ]


def _consumed(rig: Rig, topic: str) -> int:
    inbox = txmq.make_inbox_table(txmq.metadata)
    with rig.engine.connect() as connection:
        query = select(func.count()).select_from(inbox).where(inbox.c.topic == topic)
        return int(connection.execute(query).scalar_one())
