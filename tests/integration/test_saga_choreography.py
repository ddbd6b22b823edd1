"""The choreographed order saga of the seeds on real brokers and PostgreSQL: ORDER_CREATED
-> payment BILLED_ORDER -> inventory ORDER_PREPARED (or PRODUCT_OUT_OF_STOCK, refunded by
payment) -> shipping ORDER_DELIVERED -> the order service concludes; a failure event that
overtakes its action undoes nothing and blocks it; the tracker reconstructs each saga."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, select, update
from sqlalchemy.orm import Session

import txmq
from txmq.saga import (
    Choreography,
    Emit,
    SagaEvent,
    SagaTracker,
    StepFailed,
    TrackedEvent,
    make_barrier_table,
    make_saga_event_table,
)
from txmq.saga.choreography import saga_event
from txmq.testing import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.database]

EVENTS = (
    "ORDER_CREATED",
    "BILLED_ORDER",
    "ORDER_PREPARED",
    "PRODUCT_OUT_OF_STOCK",
    "ORDER_DELIVERED",
    "ORDER_REFUNDED",
)


@dataclass
class Flow:
    engine: Engine
    topics: dict[str, str]
    orders: Table
    payments: Table
    reservations: Table
    deliveries: Table
    order_service: Choreography
    tracker: SagaTracker
    stops: list[Callable[[], object]] = field(default_factory=list)

    def place(self, order_id: int, *, in_stock: bool = True) -> str:
        saga_id = f"order-{order_id}"
        with Session(self.engine) as session, session.begin():
            session.execute(self.orders.insert().values(id=order_id, status="PENDING"))
            first = Emit(self.topics["ORDER_CREATED"], {"order": order_id, "in_stock": in_stock})
            return self.order_service.start(session, "order", saga_id, first)

    def status(self, order_id: int) -> str | None:
        with self.engine.connect() as connection:
            query = select(self.orders.c.status).where(self.orders.c.id == order_id)
            return connection.execute(query).scalar_one_or_none()

    def rows(self, table: Table) -> set[int]:
        with self.engine.connect() as connection:
            return {row[0] for row in connection.execute(select(table.c.order_id))}


@pytest.fixture
def flow(broker_url: str, txmq_engine: Engine, unique: Callable[[str], str]) -> Iterator[Flow]:
    metadata = MetaData()
    orders = Table(
        "orders", metadata, Column("id", Integer, primary_key=True), Column("status", String(16))
    )
    payments = Table("payments", metadata, Column("order_id", Integer, primary_key=True))
    reservations = Table("reservations", metadata, Column("order_id", Integer, primary_key=True))
    deliveries = Table("deliveries", metadata, Column("order_id", Integer, primary_key=True))
    barrier = make_barrier_table(metadata)
    events = make_saga_event_table(metadata)
    metadata.create_all(txmq_engine)
    t = {name: unique(name) for name in EVENTS}
    broker = txmq.connect(broker_url)
    stops: list[Callable[[], object]] = []

    def service(name: str) -> Choreography:
        consumer = txmq.Consumer(broker=broker, engine=txmq_engine, group=unique(name))
        producer = txmq.Producer(group=unique(name), engine=txmq_engine, broker=broker)
        stops.extend([consumer.stop, producer.close])
        return Choreography(consumer=consumer, producer=producer, barrier=barrier)

    order_service, payment, inventory, shipping = (
        service(n) for n in ("order", "payment", "inventory", "shipping")
    )

    @order_service.on(t["ORDER_DELIVERED"], step="conclude")
    def concluded(event: SagaEvent, session: Session) -> None:
        order = orders.c.id == event.data["order"]
        session.execute(update(orders).where(order).values(status="COMPLETED"))

    @order_service.on(t["ORDER_REFUNDED"], step="fail")
    def failed(event: SagaEvent, session: Session) -> None:
        order = orders.c.id == event.data["order"]
        session.execute(update(orders).where(order).values(status="FAILED"))

    @payment.on(t["ORDER_CREATED"], step="payment")
    def bill(event: SagaEvent, session: Session) -> Emit:
        session.execute(payments.insert().values(order_id=event.data["order"]))
        return Emit(t["BILLED_ORDER"], event.data)

    @payment.compensate(t["PRODUCT_OUT_OF_STOCK"], step="payment", emits=t["ORDER_REFUNDED"])
    def refund(event: SagaEvent, session: Session) -> dict[str, bool]:
        session.execute(payments.delete().where(payments.c.order_id == event.data["order"]))
        return {"refunded": True}

    @inventory.on(t["BILLED_ORDER"], step="inventory", failure=t["PRODUCT_OUT_OF_STOCK"])
    def prepare(event: SagaEvent, session: Session) -> Emit:
        session.execute(reservations.insert().values(order_id=event.data["order"]))
        if not event.data["in_stock"]:
            raise StepFailed("out of stock")
        return Emit(t["ORDER_PREPARED"], event.data)

    @shipping.on(t["ORDER_PREPARED"], step="shipping")
    def deliver(event: SagaEvent, session: Session) -> Emit:
        session.execute(deliveries.insert().values(order_id=event.data["order"]))
        return Emit(t["ORDER_DELIVERED"], event.data)

    tracking = txmq.Consumer(broker=broker, engine=txmq_engine, group=unique("tracker"))
    stops.append(tracking.stop)
    tracker = SagaTracker(
        consumer=tracking,
        table=events,
        topics=t.values(),
        completed=[t["ORDER_DELIVERED"]],
        failed=[t["ORDER_REFUNDED"]],
    )
    for part in (order_service, payment, inventory, shipping):
        part.consumer.start()
        part.producer.start()
    tracking.start()
    try:
        yield Flow(
            txmq_engine,
            t,
            orders,
            payments,
            reservations,
            deliveries,
            order_service,
            tracker,
            stops,
        )
    finally:
        for stop in stops:
            stop()
        broker.close()


def test_orders_are_delivered_or_refunded_and_failed(flow: Flow) -> None:
    delivered = [flow.place(n) for n in (1, 2)]
    out_of_stock = flow.place(3, in_stock=False)
    wait_for(lambda: flow.status(1) == flow.status(2) == "COMPLETED", what="deliveries")
    wait_for(lambda: flow.status(3) == "FAILED", what="the refund")
    assert flow.rows(flow.payments) == {1, 2}
    assert flow.rows(flow.reservations) == {1, 2}  # the failed reservation was rolled back
    assert flow.rows(flow.deliveries) == {1, 2}
    t = {topic: name for name, topic in flow.topics.items()}

    def tracked(saga_id: str) -> list[str] | None:
        # Four events each; the tracker receives them from four topics in any order.
        progress = flow.tracker.progress(saga_id)
        if progress is None or len(progress.events) < 4:
            return None
        return [t[e.topic] for e in progress.events]

    for saga_id in delivered:
        assert wait_for(lambda s=saga_id: tracked(s), what=saga_id) == [
            "ORDER_CREATED",
            "BILLED_ORDER",
            "ORDER_PREPARED",
            "ORDER_DELIVERED",
        ]
    assert wait_for(lambda: tracked(out_of_stock), what="the failed saga") == [
        "ORDER_CREATED",
        "BILLED_ORDER",
        "PRODUCT_OUT_OF_STOCK",
        "ORDER_REFUNDED",
    ]
    progress = flow.tracker.progress(out_of_stock)
    assert progress is not None
    assert progress.status == "FAILED"
    assert progress.events[-1].data == {
        "order": 3,
        "in_stock": False,
        "error": "out of stock",
        "refunded": True,
    }


def test_a_failure_event_before_its_action_refunds_nothing_and_blocks_the_late_charge(
    flow: Flow,
) -> None:
    out_of_stock = Emit(flow.topics["PRODUCT_OUT_OF_STOCK"], {"order": 5, "in_stock": False})
    with Session(flow.engine) as session, session.begin():
        session.execute(flow.orders.insert().values(id=5, status="PENDING"))
        flow.order_service.producer.stage(session, saga_event("order-5", "order", out_of_stock))
    wait_for(lambda: flow.status(5) == "FAILED", what="the empty refund")

    def refunds() -> list[TrackedEvent]:
        # The tracker is a consumer group of its own: it may see the refund after the order
        # service did.
        progress = flow.tracker.progress("order-5")
        events = progress.events if progress is not None else ()
        return [e for e in events if e.topic == flow.topics["ORDER_REFUNDED"]]

    refunded = wait_for(refunds, what="the tracked refund")
    assert refunded[0].data["empty"] is True
    # The ORDER_CREATED that was overtaken comes now: payment does not charge.
    with Session(flow.engine) as session, session.begin():
        created = Emit(flow.topics["ORDER_CREATED"], {"order": 5, "in_stock": True})
        flow.order_service.start(session, "order", "order-5", created)

    def seen(topic: str) -> bool:
        progress = flow.tracker.progress("order-5")
        return progress is not None and any(e.topic == topic for e in progress.events)

    wait_for(lambda: seen(flow.topics["ORDER_CREATED"]), what="the late ORDER_CREATED")
    wait_for(lambda: _consumed(flow, flow.topics["ORDER_CREATED"]) == 1, what="payment consumed it")
    assert flow.rows(flow.payments) == set()
    assert not seen(flow.topics["BILLED_ORDER"])


def _consumed(flow: Flow, topic: str) -> int:
    inbox = txmq.make_inbox_table(txmq.metadata)
    with flow.engine.connect() as connection:
        query = select(inbox.c.consumer_group).where(inbox.c.topic == topic)
        return len([g for (g,) in connection.execute(query) if g.startswith("payment")])
