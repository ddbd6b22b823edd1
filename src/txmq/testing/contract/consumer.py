"""Consumer contract: the same scenarios on every adapter (``broker_url``), PostgreSQL.

Every test uses its own group, topic and tables, so it can run next to anyone else's, and
runs on both APIs (``api``): :class:`txmq.Consumer`, and :class:`txmq.aio.AsyncConsumer`
through asyncpg with the scenario's handlers awaited as ``async def`` ones.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import (
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

import txmq
from txmq.adapters import Adapter
from txmq.consumer import (
    Compensation,
    Consumer,
    DeadLetters,
    Reject,
    RetryPolicy,
    attempt_of,
    make_inbox_table,
)
from txmq.message import Message
from txmq.testing import wait_for
from txmq.testing.contract.apis import Api
from txmq.testing.contract.features import Features, requires

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]

WAIT = 60.0


@dataclass
class Env:
    """One test's broker, database tables and unique names."""

    adapter: Adapter
    engine: Engine
    inbox: Table
    applied: Table
    accounts: Table
    group: str
    topic: str
    suffix: str
    api: Api

    def consumer(self, group: str | None = None, **kwargs: object) -> Consumer:
        """A consumer of the test's API (an ``AsyncConsumer`` used as a ``Consumer``)."""
        kwargs.setdefault("poll_interval", 0.2)
        made: Consumer = self.api.consumer(
            broker=self.adapter,
            engine=self.engine,
            group=group or self.group,
            inbox=self.inbox,
            **kwargs,
        )
        return made

    def record(self, message: Message, session: Session) -> None:
        session.execute(
            self.applied.insert().values(message_id=message.id, attempt=attempt_of(message))
        )

    def applied_ids(self) -> list[str]:
        with self.engine.connect() as c:
            return list(c.execute(select(self.applied.c.message_id)).scalars())

    def publish(self, *messages: Message) -> None:
        with self.adapter.publisher() as publisher:
            outcomes = publisher.publish(messages)
        assert all(o.ok for o in outcomes), [o.error for o in outcomes]

    def dead_letters(self, topic: str | None = None) -> DeadLetters:
        return DeadLetters(self.adapter, group=self.group, topic=topic or self.topic)


@pytest.fixture
def env(broker_url: str, database_url: str, api: Api) -> Iterator[Env]:
    suffix = uuid.uuid4().hex[:10]
    metadata = MetaData()
    inbox = make_inbox_table(metadata, name=f"inbox_{suffix}")
    applied = Table(
        f"applied_{suffix}",
        metadata,
        Column("row", Integer, primary_key=True, autoincrement=True),
        Column("message_id", String(80), nullable=False),
        Column("attempt", Integer, nullable=False),
    )
    accounts = Table(
        f"accounts_{suffix}",
        metadata,
        Column("name", String(10), primary_key=True),
        Column("balance", Integer, nullable=False),
    )
    engine = create_engine(database_url, pool_size=10)
    metadata.create_all(engine)
    adapter = txmq.connect(broker_url)
    try:
        yield Env(
            adapter, engine, inbox, applied, accounts, f"g{suffix}", f"t{suffix}.evt", suffix, api
        )
    finally:
        adapter.close()
        metadata.drop_all(engine)
        engine.dispose()


def test_a_message_is_applied_once_even_when_published_twice(env: Env) -> None:
    consumer = env.consumer()
    consumer.add_handler(env.topic, env.record)
    m = Message(env.topic, b"1")
    with consumer:
        consumer.start()
        env.publish(m, m)
        wait_for(lambda: consumer.stats.processed + consumer.stats.duplicates == 2)
    assert env.applied_ids() == [m.id]
    assert consumer.stats.duplicates == 1


def test_failing_twice_then_succeeding_waits_the_delays_and_applies_once(env: Env) -> None:
    consumer = env.consumer(retry=RetryPolicy(delays=(1, 2)))
    calls: list[tuple[int, float]] = []

    @consumer.handler(env.topic)
    def flaky(message: Message, session: Session) -> None:
        calls.append((attempt_of(message), time.monotonic()))
        env.record(message, session)
        if attempt_of(message) < 3:
            raise ConnectionError("downstream unavailable")

    m = Message(env.topic, b"1")
    with consumer:
        consumer.start()
        env.publish(m)
        wait_for(lambda: consumer.stats.processed == 1, what="third attempt")
    assert [attempt for attempt, _ in calls] == [1, 2, 3]
    first_gap, second_gap = calls[1][1] - calls[0][1], calls[2][1] - calls[1][1]
    assert 0.95 <= first_gap < 6, first_gap
    assert 1.95 <= second_gap < 7, second_gap
    assert env.applied_ids() == [m.id]


def test_two_instances_share_the_attempt_count(env: Env) -> None:
    calls: list[tuple[str, int]] = []
    lock = threading.Lock()
    policy = RetryPolicy(delays=(0.5, 0.5))  # 3 attempts in total
    consumers = [env.consumer(retry=policy, prefetch=1) for _ in range(2)]
    for index, consumer in enumerate(consumers):

        def failing(message: Message, session: Session, index: int = index) -> None:
            with lock:
                calls.append((f"instance-{index}", attempt_of(message)))
            raise RuntimeError("always")

        consumer.add_handler(env.topic, failing)
    messages = [Message(env.topic, str(i).encode(), key=f"k{i}") for i in range(4)]
    try:
        for consumer in consumers:
            consumer.start()
        env.publish(*messages)
        wait_for(lambda: sum(c.stats.dead_lettered for c in consumers) == 4, what="DLQ")
    finally:
        for consumer in consumers:
            consumer.stop()
    assert sorted(attempt for _, attempt in calls) == sorted([1, 2, 3] * 4)
    letters = env.dead_letters().list(timeout=10)
    assert sorted(letter.message.id for letter in letters) == sorted(m.id for m in messages)
    assert {letter.attempts for letter in letters} == {3}


@requires("raw_publish")
def test_poison_and_undecodable_messages_go_to_the_dlq_at_once(
    env: Env, broker_url: str, txmq_features: Features
) -> None:
    consumer = env.consumer(retry=RetryPolicy(delays=(30,), non_retryable=(ValueError,)))

    @consumer.handler(env.topic)
    def handler(message: Message, session: Session) -> None:
        if message.body == b"poison":
            raise ValueError("amount is negative")
        env.record(message, session)

    poison, good = Message(env.topic, b"poison"), Message(env.topic, b"good")
    with consumer:
        consumer.start()
        publish_raw(txmq_features, broker_url, env.topic, b"\x00not txmq", {"origin": "legacy"})
        env.publish(poison)
        wait_for(lambda: consumer.stats.dead_lettered == 2, what="both dead-lettered")
        env.publish(good)
        wait_for(lambda: consumer.stats.processed == 1, what="consuming goes on")
    assert consumer.stats.retried == 0
    letters = {letter.raw: letter for letter in env.dead_letters().list(timeout=10)}
    assert letters[False].message.id == poison.id
    assert letters[False].error_type == "ValueError"
    assert letters[False].error_message == "amount is negative"
    assert letters[False].attempts == 1
    assert letters[False].message.topic == env.topic
    assert letters[True].message.body == b"\x00not txmq"
    assert letters[True].message.headers["origin"] == "legacy"
    assert letters[True].error_type == "txmq.errors.MessageDecodeError"
    assert env.applied_ids() == [good.id]


def test_dlq_replay_applies_once_and_purge_removes(env: Env) -> None:
    consumer = env.consumer(retry=RetryPolicy.no_retry())
    fixed = threading.Event()

    @consumer.handler(env.topic)
    def handler(message: Message, session: Session) -> None:
        if not fixed.is_set():
            raise RuntimeError("bug, fixed in the next release")
        env.record(message, session)

    replayed, purged = Message(env.topic, b"replay me"), Message(env.topic, b"purge me")
    dlq = env.dead_letters()
    with consumer:
        consumer.start()
        env.publish(replayed, purged)
        wait_for(lambda: consumer.stats.dead_lettered == 2)
        fixed.set()
        result = dlq.replay([replayed.id], timeout=20)
        assert result.replayed == [replayed.id]
        wait_for(lambda: consumer.stats.processed == 1, what="replayed message applied")
        assert [letter.message.id for letter in dlq.list(timeout=15)] == [purged.id]
        assert dlq.purge() == 1
        assert dlq.list(timeout=15) == []
    assert env.applied_ids() == [replayed.id]


def test_compensation_refunds_the_debited_account_and_books_balance(env: Env) -> None:
    bank = f"bank{env.suffix}"
    with env.engine.begin() as c:
        c.execute(
            env.accounts.insert(), [{"name": "A", "balance": 100}, {"name": "B", "balance": 0}]
        )
    accounts = env.accounts

    def move(session: Session, name: str, amount: int) -> None:
        session.execute(
            update(accounts)
            .where(accounts.c.name == name)
            .values(balance=accounts.c.balance + amount)
        )

    refunder = env.consumer(group=f"{bank}-compensation")

    @refunder.compensation(bank)
    def refund(compensation: Compensation, session: Session) -> None:
        move(session, compensation.headers["from"], int(compensation.body))

    crediter = env.consumer(retry=RetryPolicy(delays=(0.5,)), compensate=True)

    @crediter.handler(env.topic)
    def credit(message: Message, session: Session) -> None:
        if message.headers["to"] == "closed":
            raise Reject("account closed")
        if message.headers["to"] == "flaky":
            raise TimeoutError("core banking timeout")
        move(session, message.headers["to"], int(message.body))

    def transfer(amount: int, to: str) -> Message:
        """The producer debits A and publishes the credit in one go (outbox stand-in)."""
        with Session(env.engine) as session, session.begin():
            move(session, "A", -amount)
        return Message(
            env.topic,
            str(amount).encode(),
            headers={"from": "A", "to": to, "x-txmq-producer-group": bank},
        )

    with refunder, crediter:
        refunder.start()
        crediter.start()
        env.publish(transfer(30, "closed"), transfer(20, "B"), transfer(10, "flaky"))
        wait_for(lambda: refunder.stats.processed == 2, what="two refunds")
        wait_for(lambda: crediter.stats.processed == 1)
    with env.engine.connect() as c:
        balances = dict(c.execute(select(accounts.c.name, accounts.c.balance)).all())
    assert balances == {"A": 80, "B": 20}
    assert crediter.stats.compensations == 2


@pytest.mark.parametrize("mode", ["per-message", "batch", "auto"])
def test_graceful_stop_loses_and_doubles_nothing(env: Env, mode: str) -> None:
    batch = {"per-message": {}, "batch": {"batch_size": 10}, "auto": {"batch_size": "auto"}}[mode]
    handled = threading.Semaphore(0)
    lock, first_runs = threading.Lock(), [0]

    def working(message: Message, session: Session, seconds: float = 0.01) -> None:
        env.record(message, session)
        time.sleep(seconds)  # a handler doing real work, so stop() finds messages in flight
        handled.release()

    def first_handler(message: Message, session: Session) -> None:
        # From its 16th run on, 200 ms: the 45 messages left take seconds, so the stop
        # below comes mid-stream even when this thread is late to call it.
        with lock:
            first_runs[0] += 1
            seconds = 0.2 if first_runs[0] > 15 else 0.01
        working(message, session, seconds)

    messages = [Message(env.topic, str(i).encode(), key=f"k{i % 5}") for i in range(60)]
    first = env.consumer(concurrency=2, prefetch=20, **batch)  # type: ignore[arg-type]
    first.add_handler(env.topic, first_handler)
    first.start()
    env.publish(*messages)
    for _ in range(15):
        assert handled.acquire(timeout=WAIT)
    assert first.stop(timeout=30)
    done_first = len(env.applied_ids())
    assert 15 <= done_first < 60
    second = env.consumer(concurrency=2, prefetch=20, **batch)  # type: ignore[arg-type]
    second.add_handler(env.topic, working)
    with second:
        second.start()
        wait_for(lambda: len(env.applied_ids()) >= 60, what="the rest")
        # Anything redelivered beyond the 60 would show up as an extra row; the inbox
        # turns redeliveries into duplicates instead.
    assert sorted(env.applied_ids()) == sorted(m.id for m in messages)


@pytest.mark.parametrize("batch_size", [25, "auto"], ids=["batch", "auto"])
def test_batch_mode_isolates_a_poison_message(env: Env, batch_size: int | str) -> None:
    consumer = env.consumer(batch_size=batch_size, prefetch=100, retry=RetryPolicy.no_retry())

    @consumer.handler(env.topic)
    def handler(message: Message, session: Session) -> None:
        env.record(message, session)
        if message.body == b"poison":
            raise ValueError("poison")

    messages = [Message(env.topic, b"poison" if i == 7 else b"ok") for i in range(50)]
    with consumer:
        consumer.start()
        env.publish(*messages, messages[3])
        wait_for(lambda: consumer.stats.processed == 49 and consumer.stats.dead_lettered == 1)
        wait_for(lambda: consumer.stats.duplicates >= 1, what="duplicate skipped")
    assert sorted(env.applied_ids()) == sorted(m.id for m in messages if m.body == b"ok")


@requires(protocol="kafka")  # Kafka offsets, read with confluent-kafka
def test_kafka_a_slow_message_holds_the_committed_offset(env: Env, broker_url: str) -> None:
    """Messages after a slow one may finish first (here: other groups' DLQ replays, settled
    without a handler); the group's committed offset still stops at the slow one."""
    started, release = threading.Event(), threading.Event()
    consumer = env.consumer(batch_size=2, prefetch=20)

    @consumer.handler(env.topic)
    def handler(message: Message, session: Session) -> None:
        if message.body == b"slow":
            started.set()
            release.wait(WAIT)
        env.record(message, session)

    # One key, so one partition: offsets 0-1 fast, 2 slow, 3-7 replays for another group.
    replays = [
        Message(env.topic, b"not ours", key="k", headers={"x-txmq-target-group": "other"})
        for _ in range(5)
    ]
    fast = [Message(env.topic, b"fast", key="k") for _ in range(2)]
    env.publish(*fast, Message(env.topic, b"slow", key="k"), *replays)  # before the first poll
    with consumer:
        consumer.start()
        assert started.wait(WAIT)
        assert consumer.stats.skipped == 5
        assert consumer.stats.processed == 2
        # Commits may be asynchronous: wait for the one of offsets 0-1, then look again.
        wait_for(lambda: committed_offsets(broker_url, env.group, env.topic) == [2])
        assert committed_offsets(broker_url, env.group, env.topic) == [2]
        release.set()
        wait_for(lambda: committed_offsets(broker_url, env.group, env.topic) == [8])
    assert consumer.stats.processed == 3


def committed_offsets(broker_url: str, group: str, topic: str) -> list[int]:
    """The offsets ``group`` committed on ``topic``'s partitions (those with a commit)."""
    from confluent_kafka import Consumer as KafkaConsumer
    from confluent_kafka import TopicPartition

    from txmq.adapters.kafka.settings import KafkaSettings

    settings = txmq.parse_broker_url(broker_url)
    assert isinstance(settings, KafkaSettings)
    # Asks the group coordinator without joining the group.
    reader = KafkaConsumer(
        {"bootstrap.servers": ",".join(settings.bootstrap_servers), "group.id": group}
    )
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        found = reader.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    finally:
        reader.close()
    return [tp.offset for tp in found if tp.offset >= 0]


def publish_raw(
    features: Features, broker_url: str, topic: str, body: bytes, headers: dict[str, str]
) -> None:
    """Publish something that is not a txmq message (no id), the way a legacy app would."""
    assert features.raw_publish is not None, "the test requires raw_publish"
    features.raw_publish(broker_url, topic, body, headers)


@pytest.mark.parametrize("batch_size", [1, 5], ids=["per-message", "batch"])
def test_a_handler_raising_a_txmq_configuration_error_fails_the_message_not_the_consumer(
    env: Env, batch_size: int
) -> None:
    """Only txmq's own statements make a ConfigurationError fatal: one the handler raises
    (say, from a producer given the wrong database) is that message's failure."""
    consumer = env.consumer(retry=RetryPolicy.no_retry(), batch_size=batch_size)

    @consumer.handler(env.topic)
    def handler(message: Message, session: Session) -> None:
        if message.body == b"misconfigured":
            raise txmq.WrongDatabase("the handler's producer writes elsewhere")
        env.record(message, session)

    bad, good = Message(env.topic, b"misconfigured"), Message(env.topic, b"good")
    with consumer:
        consumer.start()
        env.publish(bad, good)
        wait_for(
            lambda: consumer.stats.dead_lettered == 1 and consumer.stats.processed == 1,
            what="the bad one dead-lettered and the good one applied",
        )
        assert consumer.healthy()
    (letter,) = env.dead_letters().list(timeout=10)
    assert letter.message.id == bad.id
    assert letter.error_type == "txmq.errors.WrongDatabase"
    assert env.applied_ids() == [good.id]
