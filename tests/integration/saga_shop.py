"""The order shop of the saga tests: participants (payment, inventory, shipping) and
orchestrators on one database, importable by the orchestrator process of the SIGKILL test
(``saga_orchestrator_app.py``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, func, select
from sqlalchemy.orm import Session

import txmq
from txmq.saga import (
    Orchestrator,
    SagaCommand,
    SagaDefinition,
    SagaParticipant,
    Step,
    StepFailed,
    make_barrier_table,
    make_saga_table,
)


@dataclass
class Order:
    order_id: int
    amount: int
    in_stock: bool = True


@dataclass
class Shop:
    engine: Engine
    broker: txmq.Adapter
    suffix: str
    metadata: MetaData = field(default_factory=MetaData)
    refund_broken: threading.Event = field(default_factory=threading.Event)
    closers: list[Callable[[], object]] = field(default_factory=list)
    late: list[txmq.Consumer] = field(default_factory=list)

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{self.suffix}"

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

    def participants(self, *, late: tuple[str, ...] = ()) -> None:
        """Payment, inventory and shipping; the consumers of the actions of the steps named
        in ``late`` are left unstarted in :attr:`late` (inventory's compensations run at
        once)."""
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

        for consumer in (payment_consumer, compensations):
            consumer.start()
        for name, consumer in (("inventory", actions), ("shipping", shipping.consumer)):
            if name in late:
                self.late.append(consumer)
            else:
                consumer.start()
        replies.start()

    def orchestrator(
        self, definition: SagaDefinition[Order], *, start: bool = True
    ) -> Orchestrator[Order]:
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
        if start:
            self.start(orchestrator)
        return orchestrator

    def start(self, orchestrator: Orchestrator[Order]) -> None:
        orchestrator.start()
        orchestrator.consumer.start()
        orchestrator.producer.start()

    def begin(self, orchestrator: Orchestrator[Order], order: Order) -> str:
        with Session(self.engine) as session, session.begin():
            return orchestrator.begin(session, order, saga_id=f"order-{order.order_id}")

    def timeout_states(self, orchestrator: Orchestrator[Order]) -> dict[str, int]:
        """The outbox states of the orchestrator's timeout messages, counted."""
        records = orchestrator.producer.tables.records
        topic = orchestrator.definition.timeout_topic
        with self.engine.connect() as connection:
            query = (
                select(records.c.state, func.count())
                .where(records.c.topic == topic)
                .group_by(records.c.state)
            )
            return {state: int(count) for state, count in connection.execute(query)}

    def rows(self, table: Table) -> set[int]:
        with self.engine.connect() as connection:
            return {row[0] for row in connection.execute(select(table.c.order_id))}

    def count(self, table: Table, order_id: int) -> int:
        with self.engine.connect() as connection:
            query = select(func.count()).select_from(table).where(table.c.order_id == order_id)
            return int(connection.execute(query).scalar_one())
