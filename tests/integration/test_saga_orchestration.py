"""The orchestrated order saga on real brokers and PostgreSQL: orders complete, an order
out of stock is refunded and FAILED, a timed-out step is compensated and its late action is
a no-op, and a compensation that keeps failing parks the saga until an operator retries it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, func, select
from sqlalchemy.orm import Session

import txmq
from txmq.saga import (
    Orchestrator,
    SagaCommand,
    SagaDefinition,
    SagaParticipant,
    SagaState,
    Step,
    StepFailed,
    make_barrier_table,
    make_saga_table,
    retry_saga,
)
from txmq.testing import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.database]


@dataclass
class Order:
    order_id: int
    amount: int
    in_stock: bool = True


@dataclass
class Shop:
    engine: Engine
    broker: txmq.Adapter
    unique: Callable[[str], str]
    metadata: MetaData = field(default_factory=MetaData)
    refund_broken: threading.Event = field(default_factory=threading.Event)
    closers: list[Callable[[], object]] = field(default_factory=list)
    late: list[txmq.Consumer] = field(default_factory=list)

    def __post_init__(self) -> None:
        m = self.metadata
        self.payments = Table("payments", m, Column("order_id", Integer, primary_key=True))
        self.reservations = Table("reservations", m, Column("order_id", Integer, primary_key=True))
        self.deliveries = Table("deliveries", m, Column("order_id", Integer, primary_key=True))
        self.notes = Table("notes", m, Column("order_id", Integer), Column("what", String(40)))
        self.barrier = make_barrier_table(m)
        self.sagas = make_saga_table(m)
        m.create_all(self.engine)
        u = self.unique
        self.topics = {
            n: u(f"shop.{n}") for n in ("charge", "refund", "reserve", "release", "ship")
        }

    def definition(
        self,
        *,
        inventory_timeout: float = 30,
        payment_timeout: float = 30,
        compensation_retries: int = 10,
    ) -> SagaDefinition[Order]:
        t = self.topics
        return SagaDefinition(
            name=self.unique("order"),
            data=Order,
            steps=[
                Step(
                    "payment",
                    action=t["charge"],
                    compensation=t["refund"],
                    timeout=timedelta(seconds=payment_timeout),
                    compensation_retries=compensation_retries,
                ),
                Step(
                    "inventory",
                    action=t["reserve"],
                    compensation=t["release"],
                    timeout=timedelta(seconds=inventory_timeout),
                    retries=1,
                ),
                Step("shipping", action=t["ship"]),
            ],
        )

    def producer(self, group: str) -> txmq.Producer:
        producer = txmq.Producer(group=self.unique(group), engine=self.engine, broker=self.broker)
        self.closers.append(producer.close)
        return producer

    def consumer(self, group: str, **options: object) -> txmq.Consumer:
        consumer = txmq.Consumer(
            broker=self.broker, engine=self.engine, group=self.unique(group), **options
        )  # type: ignore[arg-type]
        self.closers.append(consumer.stop)
        return consumer

    def participants(self, *, late_inventory: bool = False) -> None:
        """Payment, inventory and shipping; with ``late_inventory`` the inventory actions'
        consumer is returned unstarted (its compensations run at once)."""
        t, replies = self.topics, self.producer("participants")
        payment_consumer = self.consumer("payment", retry=txmq.RetryPolicy(delays=()))
        payment = SagaParticipant(consumer=payment_consumer, producer=replies, barrier=self.barrier)

        @payment.action(t["charge"])
        def charge(command: SagaCommand, session: Session) -> dict[str, int]:
            session.execute(self.payments.insert().values(order_id=command.data["order_id"]))
            return {"charged": command.data["amount"]}

        @payment.compensation(t["refund"])
        def refund(command: SagaCommand, session: Session) -> None:
            if self.refund_broken.is_set():
                raise RuntimeError("the payment provider is down")
            order_id = command.data["order_id"]
            session.execute(self.payments.delete().where(self.payments.c.order_id == order_id))
            session.execute(self.notes.insert().values(order_id=order_id, what="refunded"))

        actions = self.consumer("inventory-actions")
        compensations = self.consumer("inventory-compensations")
        for consumer, kind in ((actions, "action"), (compensations, "compensation")):
            inventory = SagaParticipant(consumer=consumer, producer=replies, barrier=self.barrier)
            if kind == "action":

                @inventory.action(t["reserve"])
                def reserve(command: SagaCommand, session: Session) -> None:
                    if not command.data["in_stock"]:
                        raise StepFailed("PRODUCT_OUT_OF_STOCK")
                    session.execute(
                        self.reservations.insert().values(order_id=command.data["order_id"])
                    )

            else:

                @inventory.compensation(t["release"])
                def release(command: SagaCommand, session: Session) -> None:
                    order_id = command.data["order_id"]
                    session.execute(
                        self.reservations.delete().where(self.reservations.c.order_id == order_id)
                    )

        shipping = SagaParticipant(
            consumer=self.consumer("shipping"), producer=replies, barrier=self.barrier
        )

        @shipping.action(t["ship"])
        def ship(command: SagaCommand, session: Session) -> None:
            session.execute(self.deliveries.insert().values(order_id=command.data["order_id"]))

        for consumer in (payment_consumer, compensations, shipping.consumer):
            consumer.start()
        if late_inventory:
            self.late.append(actions)
        else:
            actions.start()
        replies.start()

    def orchestrator(self, definition: SagaDefinition[Order]) -> Orchestrator[Order]:
        producer = self.producer("orchestrator")
        consumer = self.consumer("orchestrator")
        orchestrator = Orchestrator(
            definition=definition,
            consumer=consumer,
            producer=producer,
            table=self.sagas,
            poll_interval=0.2,
        )
        self.closers.append(orchestrator.close)
        orchestrator.start()
        consumer.start()
        producer.start()
        return orchestrator

    def begin(self, orchestrator: Orchestrator[Order], order: Order) -> str:
        with Session(self.engine) as session, session.begin():
            return orchestrator.begin(session, order, saga_id=f"order-{order.order_id}")

    def rows(self, table: Table) -> set[int]:
        with self.engine.connect() as connection:
            return {row[0] for row in connection.execute(select(table.c.order_id))}

    def count(self, table: Table, order_id: int) -> int:
        with self.engine.connect() as connection:
            query = select(func.count()).select_from(table).where(table.c.order_id == order_id)
            return int(connection.execute(query).scalar_one())


@pytest.fixture
def shop(broker_url: str, txmq_engine: Engine, unique: Callable[[str], str]) -> Iterator[Shop]:
    broker = txmq.connect(broker_url)
    shop = Shop(engine=txmq_engine, broker=broker, unique=unique)
    try:
        yield shop
    finally:
        for close in reversed(shop.closers):
            close()
        broker.close()


def _state(orchestrator: Orchestrator[Order], saga_id: str) -> SagaState:
    return orchestrator.get(saga_id).state


def test_orders_complete_or_fail_with_every_effect_compensated(shop: Shop) -> None:
    shop.participants()
    orchestrator = shop.orchestrator(shop.definition())
    ok = [shop.begin(orchestrator, Order(n, 10 * n)) for n in (1, 2)]
    out_of_stock = shop.begin(orchestrator, Order(3, 30, in_stock=False))
    for saga_id in ok:
        wait_for(lambda s=saga_id: _state(orchestrator, s) is SagaState.COMPLETED, what=saga_id)
    wait_for(lambda: _state(orchestrator, out_of_stock) is SagaState.FAILED, what="a refund")
    assert shop.rows(shop.payments) == {1, 2}
    assert shop.rows(shop.reservations) == {1, 2}
    assert shop.rows(shop.deliveries) == {1, 2}
    assert shop.count(shop.notes, 3) == 1  # refunded once
    failed = orchestrator.get(out_of_stock)
    assert "PRODUCT_OUT_OF_STOCK" in (failed.last_error or "")
    assert [(h["step"], h["event"]) for h in failed.history] == [
        ("payment", "started"),
        ("payment", "succeeded"),
        ("inventory", "failed"),
        ("payment", "compensated"),
    ]
    assert orchestrator.get(ok[0]).results["payment"] == {"charged": 10}
    assert orchestrator.data_of(orchestrator.get(ok[1])) == Order(2, 20)


def test_a_timed_out_step_is_compensated_and_its_late_action_is_a_no_op(shop: Shop) -> None:
    shop.participants(late_inventory=True)
    orchestrator = shop.orchestrator(shop.definition(inventory_timeout=1))
    saga_id = shop.begin(orchestrator, Order(7, 70))
    wait_for(lambda: _state(orchestrator, saga_id) is SagaState.FAILED, what="the timeout")
    events = [(h["step"], h["op"], h["event"]) for h in orchestrator.get(saga_id).history]
    assert events[-4:] == [
        ("inventory", "action", "timed out, sent again"),
        ("inventory", "action", "timed out"),
        ("inventory", "compensation", "compensated"),
        ("payment", "compensation", "compensated"),
    ]
    assert shop.rows(shop.payments) == set()
    # The two reserve commands arrive now, after their compensation: both are no-ops.
    (actions,) = shop.late
    actions.start()
    wait_for(lambda: actions.stats.processed >= 2, what="the late actions")
    assert shop.rows(shop.reservations) == set()
    assert _state(orchestrator, saga_id) is SagaState.FAILED


def test_a_compensation_that_keeps_failing_parks_the_saga_until_retried(shop: Shop) -> None:
    shop.participants()
    orchestrator = shop.orchestrator(shop.definition(payment_timeout=1, compensation_retries=1))
    # The payment provider is down when the refund is needed: the refund fails without a
    # reply (dead-lettered), times out, is sent again once, and the saga parks.
    shop.refund_broken.set()
    saga_id = shop.begin(orchestrator, Order(9, 90, in_stock=False))
    wait_for(lambda: _state(orchestrator, saga_id) is SagaState.COMPENSATING, what="compensating")
    wait_for(lambda: _state(orchestrator, saga_id) is SagaState.PARKED, timeout=120, what="parking")
    assert shop.rows(shop.payments) == {9}
    shop.refund_broken.clear()
    retry_saga(shop.engine, shop.sagas, saga_id)
    wait_for(lambda: _state(orchestrator, saga_id) is SagaState.FAILED, what="the retried refund")
    assert shop.rows(shop.payments) == set()
    assert shop.count(shop.notes, 9) == 1
