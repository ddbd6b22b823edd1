"""``txmq demo saga``: the seeds' order flow as an orchestrated and as a choreographed saga,
on each broker, ending with an invariant report derived from the participants' tables.

Orders 1-3 succeed; order 4 is out of stock (inventory fails, payment is refunded, the
order FAILED); in the orchestrated form, order 5's inventory step times out (the reserve
command keeps failing, the warehouse is slow, and is retried every second), so inventory
receives its compensation before its action succeeded, and the retry after it is a no-op.
In the choreographed form, order 5's PRODUCT_OUT_OF_STOCK overtakes its ORDER_CREATED: the
refund is empty and the late charge is blocked.

The invariants: every order is COMPLETED with all its effects, or FAILED with none left
(every one compensated); no payment is charged without a completed or refunded order; no
effect is applied twice (each is logged, and counted).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, func, select, update
from sqlalchemy.orm import Session

from txmq.adapters import Adapter, connect
from txmq.config import redact
from txmq.consumer import Consumer, RetryPolicy, make_inbox_table
from txmq.database import open_engine
from txmq.errors import StepFailed, TxmqError
from txmq.outbox import Producer, make_outbox_tables
from txmq.saga.choreography import Choreography, Emit, SagaEvent, saga_event
from txmq.saga.commands import SagaCommand
from txmq.saga.definition import SagaDefinition, SagaState, Step
from txmq.saga.orchestrator import Orchestrator
from txmq.saga.participant import SagaParticipant
from txmq.saga.tables import make_barrier_table, make_saga_table

ORDERS = (1, 2, 3, 4, 5)
OUT_OF_STOCK = 4
#: Orchestrated: its reserve fails until the step's timeout has compensated it (the
#: barrier then blocks the retry), so no step of the other orders has to beat a short
#: timeout. Choreographed: its failure event comes before its first event.
OVERTAKEN = 5
#: Generous: the other orders' inventory steps finish well inside it on a loaded machine.
STEP_TIMEOUT = 8.0
#: How often a failed command is retried; the overtaken reserve's attempts are bounded.
RETRY_EVERY = 1.0
RETRY_ATTEMPTS = 120
EFFECTS = ("charge", "refund", "reserve", "release", "deliver")
Say = Callable[[str], object]


@dataclass
class FormResult:
    """One saga form on one broker: each order's state and the invariants' verdicts."""

    form: str
    broker: str
    states: dict[int, str]
    effects: dict[int, dict[str, int]]
    violations: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations


class _World:
    """The order, payment, inventory and shipping services of one run, on one database."""

    def __init__(self, engine: Engine, broker: Adapter, form: str) -> None:
        self.engine, self.broker, self.form = engine, broker, form
        run = uuid.uuid4().hex[:8]
        self.run = run
        self.metadata = MetaData()
        p = f"sagademo_{run}_"
        self.orders = Table(
            f"{p}orders",
            self.metadata,
            Column("id", Integer, primary_key=True),
            Column("status", String(16), nullable=False),
        )
        self.effects = Table(
            f"{p}effects",
            self.metadata,
            Column("n", Integer, primary_key=True, autoincrement=True),
            Column("order_id", Integer, nullable=False),
            Column("effect", String(16), nullable=False),
        )
        self.barrier = make_barrier_table(self.metadata, prefix=p)
        self.sagas = make_saga_table(self.metadata, prefix=p)
        self.outbox = make_outbox_tables(self.metadata, prefix=p)
        self.inbox = make_inbox_table(self.metadata, prefix=p)
        self.metadata.create_all(engine)
        self.closers: list[Callable[[], object]] = []
        self.refused: set[int] = set()  # orders whose reserve was refused
        self.lock = threading.Lock()

    def name(self, what: str) -> str:
        return f"sagademo-{self.run}.{what}"

    def producer(self, group: str) -> Producer:
        producer = Producer(
            group=self.name(group), engine=self.engine, broker=self.broker, tables=self.outbox
        )
        self.closers.append(producer.close)
        return producer

    def consumer(self, group: str, retry: RetryPolicy | None = None) -> Consumer:
        consumer = Consumer(
            broker=self.broker,
            engine=self.engine,
            group=self.name(group),
            inbox=self.inbox,
            retry=retry or RetryPolicy(delays=(RETRY_EVERY,), max_attempts=RETRY_ATTEMPTS),
            poll_interval=0.2,
        )
        self.closers.append(consumer.stop)
        return consumer

    def effect(self, session: Session, order_id: int, effect: str) -> None:
        session.execute(self.effects.insert().values(order_id=order_id, effect=effect))

    def set_status(self, session: Session, order_id: int, status: str) -> None:
        session.execute(
            update(self.orders).where(self.orders.c.id == order_id).values(status=status)
        )

    def place(self, session: Session, order_id: int) -> None:
        session.execute(self.orders.insert().values(id=order_id, status="PENDING"))

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.metadata.drop_all(self.engine)

    def verdict(self, broker: str) -> FormResult:
        with self.engine.connect() as connection:
            states = {r.id: r.status for r in connection.execute(select(self.orders))}
            counted = connection.execute(
                select(self.effects.c.order_id, self.effects.c.effect, func.count()).group_by(
                    self.effects.c.order_id, self.effects.c.effect
                )
            )
            effects = {o: dict.fromkeys(EFFECTS, 0) for o in ORDERS}
            for order_id, effect, count in counted:
                effects[order_id][effect] = int(count)
        result = FormResult(self.form, broker, states, effects)
        for order_id in ORDERS:
            result.violations.extend(_violations(order_id, states.get(order_id), effects[order_id]))
        expected = {OUT_OF_STOCK: "FAILED"} | {o: "COMPLETED" for o in (1, 2, 3)}
        for order_id, state in expected.items():
            if states.get(order_id) != state:
                result.violations.append(f"order {order_id}: {states.get(order_id)}, not {state}")
        if states.get(OVERTAKEN) != "FAILED":
            result.violations.append(f"order {OVERTAKEN}: not FAILED after its step timed out")
        return result


def _violations(order_id: int, state: str | None, done: dict[str, int]) -> list[str]:
    """What is wrong with one order, by the invariants."""
    found = []
    if any(count > 1 for count in done.values()):
        found.append(f"order {order_id}: an effect applied twice {done}")
    if state == "COMPLETED":
        if (done["charge"], done["reserve"], done["deliver"]) != (1, 1, 1) or (
            done["refund"] or done["release"]
        ):
            found.append(f"order {order_id}: COMPLETED without all effects")
    elif state == "FAILED":
        if done["charge"] != done["refund"] or done["reserve"] != done["release"]:
            found.append(f"order {order_id}: FAILED with an effect left")
        if done["deliver"]:
            found.append(f"order {order_id}: FAILED but delivered")
    else:
        found.append(f"order {order_id}: ended {state}, not concluded")
    if done["charge"] and not (state == "COMPLETED" or done["refund"]):
        found.append(f"order {order_id}: charged, neither completed nor refunded")
    return found


@dataclass
class _Data:
    order_id: int
    in_stock: bool


def _orchestrated(world: _World, timeout: float) -> None:
    replies = world.producer("participants")
    payment = SagaParticipant(
        consumer=world.consumer("payment"), producer=replies, barrier=world.barrier
    )
    inventory = SagaParticipant(
        consumer=world.consumer("inventory"), producer=replies, barrier=world.barrier
    )
    shipping = SagaParticipant(
        consumer=world.consumer("shipping"), producer=replies, barrier=world.barrier
    )

    @payment.action(world.name("payment.charge"))
    def charge(command: SagaCommand, session: Session) -> None:
        world.effect(session, command.data["order_id"], "charge")

    @payment.compensation(world.name("payment.refund"))
    def refund(command: SagaCommand, session: Session) -> None:
        world.effect(session, command.data["order_id"], "refund")

    @inventory.action(world.name("inventory.reserve"))
    def reserve(command: SagaCommand, session: Session) -> None:
        order_id = command.data["order_id"]
        if not command.data["in_stock"]:
            raise StepFailed("PRODUCT_OUT_OF_STOCK")
        if order_id == OVERTAKEN:
            # Until the timeout's compensation reaches the barrier, which blocks the retry
            # that follows it before this function runs.
            with world.lock:
                world.refused.add(order_id)
            raise RuntimeError("the warehouse is slow today (retried until the timeout)")
        world.effect(session, order_id, "reserve")

    @inventory.compensation(world.name("inventory.release"))
    def release(command: SagaCommand, session: Session) -> None:
        world.effect(session, command.data["order_id"], "release")

    @shipping.action(world.name("shipping.deliver"))
    def deliver(command: SagaCommand, session: Session) -> None:
        world.effect(session, command.data["order_id"], "deliver")

    seconds = timedelta(seconds=STEP_TIMEOUT)
    definition = SagaDefinition(
        name=world.name("order"),
        data=_Data,
        steps=[
            Step(
                "payment",
                action=world.name("payment.charge"),
                compensation=world.name("payment.refund"),
                timeout=timedelta(seconds=30),
            ),
            Step(
                "inventory",
                action=world.name("inventory.reserve"),
                compensation=world.name("inventory.release"),
                timeout=seconds,
                retries=0,
            ),
            Step("shipping", action=world.name("shipping.deliver"), timeout=timedelta(seconds=30)),
        ],
    )
    orchestrator = Orchestrator(
        definition=definition,
        consumer=world.consumer("order"),
        producer=world.producer("order"),
        table=world.sagas,
        poll_interval=0.2,
    )
    world.closers.append(orchestrator.close)
    for part in (payment, inventory, shipping):
        part.consumer.start()
    replies.start()
    orchestrator.start()
    orchestrator.consumer.start()
    orchestrator.producer.start()
    saga_ids = {}
    for order_id in ORDERS:
        with Session(world.engine) as session, session.begin():
            world.place(session, order_id)
            data = _Data(order_id, in_stock=order_id != OUT_OF_STOCK)
            saga_ids[order_id] = orchestrator.begin(session, data)

    def ended() -> bool:
        states = {o: orchestrator.get(s).state for o, s in saga_ids.items()}
        return all(
            s in (SagaState.COMPLETED, SagaState.FAILED, SagaState.PARKED) for s in states.values()
        )

    _wait(ended, timeout)
    # The order service concludes each order from its saga's end state.
    with Session(world.engine) as session, session.begin():
        for order_id, saga_id in saga_ids.items():
            state = orchestrator.get(saga_id).state
            if state in (SagaState.COMPLETED, SagaState.FAILED):
                world.set_status(session, order_id, state.value)
    # The late reserve of the overtaken order arrives after its compensation: a no-op.
    _wait(lambda: OVERTAKEN in world.refused and _late_seen(world), timeout)


def _late_seen(world: _World) -> bool:
    with world.engine.connect() as connection:
        query = (
            select(func.count())
            .select_from(world.barrier)
            .where(
                world.barrier.c.saga_id.is_not(None),
                world.barrier.c.step == "inventory",
                world.barrier.c.outcome == "blocked",
            )
        )
        blocked = int(connection.execute(query).scalar_one())
        inbox = world.inbox
        retried = connection.execute(
            select(func.count())
            .select_from(inbox)
            .where(inbox.c.topic == world.name("inventory.reserve"))
        ).scalar_one()
    return blocked >= 1 and int(retried) >= len(ORDERS)


def _choreographed(world: _World, timeout: float) -> None:
    t = {
        e: world.name(e)
        for e in (
            "ORDER_CREATED",
            "BILLED_ORDER",
            "ORDER_PREPARED",
            "PRODUCT_OUT_OF_STOCK",
            "ORDER_DELIVERED",
            "ORDER_REFUNDED",
        )
    }

    def service(name: str) -> Choreography:
        return Choreography(
            consumer=world.consumer(name), producer=world.producer(name), barrier=world.barrier
        )

    order, payment, inventory, shipping = (
        service(n) for n in ("order", "payment", "inventory", "shipping")
    )

    @order.on(t["ORDER_DELIVERED"], step="conclude")
    def concluded(event: SagaEvent, session: Session) -> None:
        world.set_status(session, event.data["order_id"], "COMPLETED")

    @order.on(t["ORDER_REFUNDED"], step="fail")
    def failed(event: SagaEvent, session: Session) -> None:
        world.set_status(session, event.data["order_id"], "FAILED")

    @payment.on(t["ORDER_CREATED"], step="payment")
    def bill(event: SagaEvent, session: Session) -> Emit:
        world.effect(session, event.data["order_id"], "charge")
        return Emit(t["BILLED_ORDER"], event.data)

    @payment.compensate(t["PRODUCT_OUT_OF_STOCK"], step="payment", emits=t["ORDER_REFUNDED"])
    def refund(event: SagaEvent, session: Session) -> None:
        world.effect(session, event.data["order_id"], "refund")

    @inventory.on(t["BILLED_ORDER"], step="inventory", failure=t["PRODUCT_OUT_OF_STOCK"])
    def prepare(event: SagaEvent, session: Session) -> Emit:
        world.effect(session, event.data["order_id"], "reserve")
        if not event.data["in_stock"]:
            raise StepFailed("PRODUCT_OUT_OF_STOCK")
        return Emit(t["ORDER_PREPARED"], event.data)

    @shipping.on(t["ORDER_PREPARED"], step="shipping")
    def deliver(event: SagaEvent, session: Session) -> Emit:
        world.effect(session, event.data["order_id"], "deliver")
        return Emit(t["ORDER_DELIVERED"], event.data)

    for part in (order, payment, inventory, shipping):
        part.consumer.start()
        part.producer.start()
    saga = world.name("order")
    for order_id in ORDERS:
        data = {"order_id": order_id, "in_stock": order_id != OUT_OF_STOCK}
        with Session(world.engine) as session, session.begin():
            world.place(session, order_id)
            if order_id == OVERTAKEN:  # its failure event overtakes it
                overtaking = Emit(t["PRODUCT_OUT_OF_STOCK"], data | {"in_stock": False})
                order.producer.stage(session, saga_event(f"order-{order_id}", saga, overtaking))
        if order_id == OVERTAKEN:
            _wait(lambda: _status(world, OVERTAKEN) == "FAILED", timeout)
        with Session(world.engine) as session, session.begin():
            order.start(session, saga, f"order-{order_id}", Emit(t["ORDER_CREATED"], data))
    _wait(lambda: all(_status(world, o) in ("COMPLETED", "FAILED") for o in ORDERS), timeout)
    inbox = world.inbox

    def consumed() -> bool:
        with world.engine.connect() as connection:
            query = (
                select(func.count()).select_from(inbox).where(inbox.c.topic == t["ORDER_CREATED"])
            )
            return int(connection.execute(query).scalar_one()) >= len(ORDERS)

    _wait(consumed, timeout)  # the overtaken ORDER_CREATED too: its charge was blocked


def _status(world: _World, order_id: int) -> str | None:
    with world.engine.connect() as connection:
        query = select(world.orders.c.status).where(world.orders.c.id == order_id)
        return connection.execute(query).scalar_one_or_none()


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def run_saga_demo(broker: Adapter, engine: Engine, *, timeout: float = 90.0) -> list[FormResult]:
    """Run both forms on ``broker`` and ``engine``; return their verdicts (the demo's tables
    are dropped afterwards)."""
    results = []
    for form, flow in (("orchestrated", _orchestrated), ("choreographed", _choreographed)):
        world = _World(engine, broker, form)
        try:
            flow(world, timeout)
            results.append(world.verdict(broker.system))
        finally:
            world.close()
    return results


def run(
    brokers: Sequence[str], database: str | None, *, as_json: bool = False, timeout: float = 90.0
) -> int:
    """``txmq demo saga``: run both forms on each broker, print the invariant report (or
    one JSON document); return 0 when every invariant holds, 1 when one fails, 2 when the
    demo could not run."""
    say: Say = (lambda _: None) if as_json else print
    try:
        with ExitStack() as stack:
            if database is None:
                folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="txmq-saga-"))
                database = f"sqlite:///{folder}/saga.db"
            engine = open_engine(database)
            stack.callback(engine.dispose)
            results: list[FormResult] = []
            for url in brokers:
                adapter = connect(url)
                stack.callback(adapter.close)
                say(f"-- {adapter.system}: the order saga, orchestrated and choreographed")
                results.extend(run_saga_demo(adapter, engine, timeout=timeout))
    except TxmqError as exc:
        print(f"error: {redact(str(exc)).splitlines()[0]}", file=sys.stderr)
        return 2
    passed = all(r.passed for r in results) and bool(results)
    if as_json:
        print(json.dumps({"passed": passed, "runs": [_as_json(r) for r in results]}))
    else:
        for r in results:
            mark = "ok " if r.passed else "FAIL"
            states = " ".join(f"{o}={s}" for o, s in sorted(r.states.items()))
            say(f"[{mark}] {r.broker} {r.form}: {states}")
            for violation in r.violations:
                say(f"       {violation}")
        say("invariants hold" if passed else "INVARIANTS VIOLATED")
    return 0 if passed else 1


def _as_json(result: FormResult) -> dict[str, Any]:
    return {
        "form": result.form,
        "broker": result.broker,
        "passed": result.passed,
        "orders": {str(o): s for o, s in result.states.items()},
        "effects": {str(o): e for o, e in result.effects.items()},
        "violations": result.violations,
    }
