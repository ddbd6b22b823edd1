"""A consumer process for the SIGKILL tests: ``python consumer_app.py '<json config>'``.

Config keys: broker_url, database_url, group, topic, suffix (table names), crash
(``"after-commit"``: SIGKILL itself at the first ack after ``acks_before_crash``
deliveries (default 0) were acknowledged, i.e. after the DB commit of the next ones and
before the broker hears of them; ``"before-commit"``: SIGKILL inside the handler's transaction;
``"none"``), expect (stop once processed + duplicates reaches it; ``0``: block in
``Consumer.run()`` until SIGTERM), fresh_only (count only processed messages towards
``expect``, not duplicates), slow (seconds each handler call takes). Prints the
consumer's stats as JSON on exit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine
from sqlalchemy.orm import Session

import txmq
from txmq.adapters import Adapter, Subscription
from txmq.consumer import Consumer, RetryPolicy, make_inbox_table
from txmq.message import Message
from txmq.wire import Delivery

RETRY = RetryPolicy(delays=(1,))


def tables(suffix: str) -> tuple[MetaData, Table, Table]:
    metadata = MetaData()
    inbox = make_inbox_table(metadata, name=f"inbox_{suffix}")
    applied = Table(
        f"applied_{suffix}",
        metadata,
        Column("row", Integer, primary_key=True, autoincrement=True),
        Column("message_id", String(80), nullable=False),
    )
    return metadata, inbox, applied


class KillAtAck(Subscription):
    """Delegates to a real subscription, but dies instead of acknowledging more than
    ``survive`` deliveries."""

    def __init__(self, inner: Subscription, survive: int) -> None:
        self.inner = inner
        self.survive = survive

    def poll(self, timeout: float, max_messages: int = 100) -> list[Delivery]:
        return self.inner.poll(timeout, max_messages)

    def ack(self, deliveries: Iterable[Delivery]) -> None:
        batch = list(deliveries)
        if len(batch) > self.survive:
            os.kill(os.getpid(), signal.SIGKILL)
        self.survive -= len(batch)
        self.inner.ack(batch)

    def release(self, deliveries: Iterable[Delivery]) -> None:
        self.inner.release(deliveries)

    def close(self) -> None:
        self.inner.close()


def crash_at_ack(adapter: Adapter, survive: int) -> None:
    real_subscribe = adapter.subscribe

    def subscribe(group: str, sources: Sequence[str], *, prefetch: int = 100) -> Subscription:
        return KillAtAck(real_subscribe(group, sources, prefetch=prefetch), survive)

    adapter.subscribe = subscribe  # type: ignore[method-assign]


def main() -> None:
    config = json.loads(sys.argv[1])
    _, inbox, applied = tables(config["suffix"])
    engine = create_engine(config["database_url"])
    adapter = txmq.connect(config["broker_url"])
    if config["crash"] == "after-commit":
        crash_at_ack(adapter, config.get("acks_before_crash", 0))
    consumer = Consumer(
        broker=adapter,
        engine=engine,
        group=config["group"],
        inbox=inbox,
        retry=RETRY,
        poll_interval=0.2,
    )

    @consumer.handler(config["topic"])
    def handler(message: Message, session: Session) -> None:
        session.execute(applied.insert().values(message_id=message.id))
        session.flush()
        if config["crash"] == "before-commit":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(config.get("slow", 0))  # the handler's own work

    if config["expect"] == 0:
        consumer.run()  # returns after SIGTERM, once in-flight work is committed and acked
        adapter.close()
        print(json.dumps(dataclasses.asdict(consumer.stats)))
        return
    consumer.start()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        stats = consumer.stats
        counted = stats.processed
        if not config.get("fresh_only"):
            counted += stats.duplicates
        if counted >= config["expect"]:
            break
        time.sleep(0.05)
    consumer.stop()
    adapter.close()
    print(json.dumps(dataclasses.asdict(consumer.stats)))


if __name__ == "__main__":
    main()
