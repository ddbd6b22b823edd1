"""The due-time gate: a subscription withholds a retry until its ``x-txmq-due-at``."""

from __future__ import annotations

import time
from collections.abc import Iterable

from txmq.adapters.base import Subscription, Topology
from txmq.adapters.due_time import DueTimeGate
from txmq.adapters.memory.adapter import InMemoryBroker
from txmq.adapters.names import is_retry_queue, retry_queue
from txmq.message import Message
from txmq.wire import HEADER_DUE_AT, Delivery

GROUP, TOPIC = "billing", "orders.created"
WORK = TOPIC
RETRY_1 = retry_queue(GROUP, TOPIC, 1)
RETRY_2 = retry_queue(GROUP, TOPIC, 2)


class Recording(Subscription):
    """Records what the gate asks of its subscription."""

    def __init__(self) -> None:
        self.paused: list[str] = []
        self.resumed: list[str] = []
        self.released: list[Delivery] = []

    def poll(self, timeout: float, max_messages: int = 100) -> list[Delivery]:
        return []

    def ack(self, deliveries: Iterable[Delivery]) -> None:
        pass

    def release(self, deliveries: Iterable[Delivery]) -> None:
        self.released.extend(deliveries)

    def pause(self, sources: Iterable[str]) -> None:
        self.paused.extend(sources)

    def resume(self, sources: Iterable[str]) -> None:
        self.resumed.extend(sources)

    def close(self) -> None:
        pass


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def delivery(source: str, due: float | None = None, *, raw: bool = False) -> Delivery:
    headers = {} if due is None else {HEADER_DUE_AT: f"{due:.6f}"}
    if raw:
        return Delivery(None, source, False, token=object(), raw_headers=headers)
    return Delivery(Message(TOPIC, b"x", headers=headers), source, False, token=object())


def gate(clock: Clock) -> DueTimeGate:
    return DueTimeGate(GROUP, [WORK, RETRY_1, RETRY_2], clock=clock)


def test_only_the_groups_retry_stages_are_gated() -> None:
    assert gate(Clock(0)).gated == {RETRY_1, RETRY_2}
    assert is_retry_queue(GROUP, RETRY_1)
    assert not is_retry_queue("other", RETRY_1)
    assert not is_retry_queue(GROUP, TOPIC)
    assert not is_retry_queue(GROUP, f"{GROUP}.{TOPIC}.dlq")
    assert not is_retry_queue(GROUP, f"{GROUP}.{TOPIC}.retry.x")
    assert not is_retry_queue(GROUP, f"{GROUP}.retry.1")  # no topic in between


def test_a_retry_not_due_is_released_and_its_stage_paused_until_due() -> None:
    clock, subscription = Clock(1000.0), Recording()
    due_time = gate(clock)
    fresh, early, later_same_stage, other_stage_due = (
        delivery(WORK, 1100.0),  # a work source is never gated, whatever its headers say
        delivery(RETRY_1, 1005.0),
        delivery(RETRY_1, 999.0),  # behind a withheld one of its stage: withheld too
        delivery(RETRY_2, 1000.0),
    )
    admitted = due_time.admit(subscription, [fresh, early, later_same_stage, other_stage_due])
    assert admitted == [fresh, other_stage_due]
    assert subscription.released == [early, later_same_stage]
    assert subscription.paused == [RETRY_1]
    assert due_time.take_held() == 2
    assert due_time.take_held() == 0

    # The fetch before it is due waits no longer than until then, and resumes nothing.
    assert due_time.open(subscription, 30.0) == 5.0
    assert due_time.open(subscription, 2.0) == 2.0
    assert subscription.resumed == []
    clock.now = 1004.999
    assert due_time.open(subscription, 30.0) == 0.01  # never a busy loop
    clock.now = 1005.0
    assert due_time.open(subscription, 30.0) == 30.0
    assert subscription.resumed == [RETRY_1]
    assert due_time.admit(subscription, [early]) == [early]


def test_retries_without_a_due_time_or_past_it_pass_and_undecodable_ones_are_gated_too() -> None:
    clock, subscription = Clock(50.0), Recording()
    due_time = gate(clock)
    plain, past = delivery(RETRY_1), delivery(RETRY_1, 49.0)
    assert due_time.admit(subscription, [plain, past]) == [plain, past]
    raw = delivery(RETRY_2, 60.0, raw=True)
    assert due_time.admit(subscription, [raw]) == []
    assert subscription.paused == [RETRY_2]
    assert due_time.take_held() == 1


def test_a_gate_over_no_retry_source_hands_out_everything() -> None:
    subscription = Recording()
    due_time = DueTimeGate(GROUP, [WORK], clock=Clock(0.0))
    deliveries = [delivery(WORK, 10.0)]
    assert due_time.admit(subscription, deliveries) == deliveries
    assert due_time.open(subscription, 3.0) == 3.0
    assert subscription.paused == subscription.released == []


def test_the_memory_broker_imitating_kafka_withholds_a_retry_in_its_subscription() -> None:
    """``retry_mode=consume``: the subscription itself gives nothing before it is due."""
    broker = InMemoryBroker(retry_mode="consume")
    topology = Topology(GROUP, TOPIC, retry_delays=(1.0,))
    broker.declare([topology])
    far = Message(TOPIC, b"far", headers={HEADER_DUE_AT: f"{time.time() + 3600:.6f}"})
    soon_at = time.time() + 0.5
    soon = Message(TOPIC, b"soon", headers={HEADER_DUE_AT: f"{soon_at:.6f}"})
    with broker.publisher() as publisher:
        publisher.send_to_queue(retry_queue(GROUP, TOPIC, 1), [far])
        publisher.send_to_queue(retry_queue(GROUP, TOPIC, 1), [soon])  # behind far
    with broker.subscribe(GROUP, broker.sources_for([topology])) as subscription:
        assert subscription.poll(0.05) == []
        assert subscription.withheld().held == 2
        assert broker.depth(retry_queue(GROUP, TOPIC, 1)) == 2  # given back, in order
    # Once due, the same stage hands it out.
    broker.purge_queue(retry_queue(GROUP, TOPIC, 1))
    with broker.publisher() as publisher:
        publisher.send_to_queue(retry_queue(GROUP, TOPIC, 1), [soon])
    with broker.subscribe(GROUP, broker.sources_for([topology])) as subscription:
        got: list[Delivery] = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got = subscription.poll(1.0)
        assert [d.message for d in got] == [soon]
        assert time.time() >= soon_at
        subscription.ack(got)
