"""Check-back resolution: how long a half message whose executor answered UNKNOWN waits,
once its immunity has passed, until the group's check-back asks the checker.

A producer started with its defaults (check-back every second) sends ``messages`` half
messages a round, a random fraction of a second apart, each with an executor answering
UNKNOWN and a checker answering COMMIT. A message's resolution time is the checker's call
minus (the send's start + the immunity). Goal: at most 2 s (median).
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import timedelta

from sqlalchemy import Engine

import txmq
from benchmarks.environment import remove_topologies
from benchmarks.harness import Results, Target, alternate, wait


def checkback_section(
    results: Results,
    broker: str,
    url: str,
    engine: Engine,
    messages: int,
    immunity: float,
    rounds: int,
) -> None:
    """Measure one broker's check-back resolution into ``results``."""
    name = f"checkback.{broker}"
    results.figure(
        f"{name}.median",
        f"check-back resolution ({broker}), median",
        "s",
        better="lower",
        target=Target(2.0, "value"),
    )
    results.figure(f"{name}.max", f"check-back resolution ({broker}), slowest", "s", better="lower")
    checked: dict[str, float] = {}

    def checker(message: txmq.Message, check_count: int) -> txmq.LocalTransactionState:
        checked.setdefault(message.id, time.monotonic())
        return txmq.LocalTransactionState.COMMIT

    def unknown(message: txmq.Message, _arg: None) -> txmq.LocalTransactionState:
        return txmq.LocalTransactionState.UNKNOWN

    suffix = uuid.uuid4().hex[:8]
    topic = f"bench.checkback.{suffix}"
    adapter = txmq.connect(url)
    producer = txmq.Producer(
        group=f"bench-check-{suffix}",
        engine=engine,
        broker=adapter,
        checker=checker,
        check_policy=txmq.CheckBackPolicy(immunity=timedelta(seconds=immunity)),
    ).start(relay=False)  # what is measured ends at the checker's answer

    def round_of_checks() -> dict[str, float]:
        sent: dict[str, float] = {}
        for _ in range(messages):
            message = txmq.Message(topic, b"half")
            sent[message.id] = time.monotonic()
            result = producer.send_in_transaction(message, unknown, None)
            assert result.record_state is txmq.RecordState.PREPARED, result
            time.sleep(random.uniform(0, 0.3))  # spread the sends over the check-back's cycle
        wait(lambda: all(i in checked for i in sent), 120, "every half message checked")
        resolved = sorted(checked.pop(i) - sent[i] - immunity for i in sent)
        return {f"{name}.median": resolved[len(resolved) // 2], f"{name}.max": resolved[-1]}

    try:
        alternate(rounds, {"check-back": round_of_checks}, results)
    finally:
        producer.close()
        # Kafka creates the topic for the half messages' (aborted) transactions.
        remove_topologies(broker, url, [], suffix)
        adapter.close()
