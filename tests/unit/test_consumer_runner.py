"""Consumer behaviour against the in-memory broker and SQLite: fast, no real broker."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine, func, select
from sqlalchemy.orm import Session

from txmq import create_schema
from txmq.adapters.base import Publisher, PublishOutcome, Topology
from txmq.adapters.memory.adapter import InMemoryBroker
from txmq.adapters.names import dead_letter_queue, work_queue
from txmq.consumer import Consumer, DeadLetters, Reject, RetryPolicy, attempt_of
from txmq.errors import ConfigurationError, PublishError
from txmq.message import Message
from txmq.process.consume import override
from txmq.sql.tables import make_inbox_table
from txmq.testing import wait_for

GROUP = "g"
TOPIC = "orders.created"

metadata = MetaData()
applied = Table(
    "applied",
    metadata,
    Column("row", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(80), nullable=False),
    Column("attempt", Integer, nullable=False),
)
inbox = make_inbox_table(metadata)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(engine)
    create_schema(engine, inbox)
    yield engine
    engine.dispose()


def applied_ids(engine: Engine) -> list[str]:
    with engine.connect() as c:
        return list(c.execute(select(applied.c.message_id).order_by(applied.c.row)).scalars())


def record(message: Message, session: Session) -> None:
    session.execute(applied.insert().values(message_id=message.id, attempt=attempt_of(message)))


def make_consumer(broker: InMemoryBroker, engine: Engine, **kwargs: object) -> Consumer:
    kwargs.setdefault("poll_interval", 0.05)
    return Consumer(broker=broker, engine=engine, group=GROUP, inbox=inbox, **kwargs)  # type: ignore[arg-type]


def publish(broker: InMemoryBroker, *messages: Message) -> None:
    with broker.publisher() as publisher:
        assert all(o.ok for o in publisher.publish(messages))


def test_a_message_is_applied_once_even_when_delivered_twice(engine: Engine) -> None:
    broker = InMemoryBroker()
    consumer = make_consumer(broker, engine)
    consumer.add_handler(TOPIC, record)
    broker.declare(consumer.topologies())
    m = Message(TOPIC, b"1")
    publish(broker, m, m)
    with consumer:
        consumer.start()
        wait_for(lambda: consumer.stats.processed + consumer.stats.duplicates == 2)
    assert applied_ids(engine) == [m.id]
    assert consumer.stats.duplicates == 1
    assert broker.depth(work_queue(GROUP, TOPIC)) == 0
    assert broker.acks == 2


def test_handler_fails_twice_then_succeeds_after_the_delays(engine: Engine) -> None:
    broker = InMemoryBroker()
    consumer = make_consumer(broker, engine, retry=RetryPolicy(delays=(0.2, 0.4)))
    attempts: list[tuple[int, float]] = []

    @consumer.handler(TOPIC)
    def flaky(message: Message, session: Session) -> None:
        attempts.append((attempt_of(message), time.monotonic()))
        if attempt_of(message) < 3:
            raise ConnectionError("downstream busy")
        record(message, session)

    m = Message(TOPIC, b"1")
    with consumer:
        consumer.start()
        publish(broker, m)
        wait_for(lambda: consumer.stats.processed == 1)
    assert [a for a, _ in attempts] == [1, 2, 3]
    assert attempts[1][1] - attempts[0][1] >= 0.2
    assert attempts[2][1] - attempts[1][1] >= 0.4
    assert applied_ids(engine) == [m.id]
    assert consumer.stats.retried == 2


def test_a_first_delivery_reaches_the_handler_as_it_was_published(engine: Engine) -> None:
    broker = InMemoryBroker()
    consumer = make_consumer(broker, engine, retry=RetryPolicy(delays=(0.1,)))
    seen: list[Message] = []

    @consumer.handler(TOPIC)
    def handler(message: Message, session: Session) -> None:
        seen.append(message)
        if len(seen) == 1:
            raise ConnectionError("downstream busy")

    m = Message(TOPIC, b"1", key="k", headers={"app": "v"})
    with consumer:
        consumer.start()
        publish(broker, m)
        wait_for(lambda: consumer.stats.processed == 1)
    first, retried = seen
    assert first == m
    assert attempt_of(first) == 1
    assert retried.headers["x-txmq-attempt"] == "2"
    assert retried.headers["app"] == "v"


def test_kafka_style_retry_topics_are_held_until_due(engine: Engine) -> None:
    broker = InMemoryBroker(retry_mode="consume")
    consumer = make_consumer(broker, engine, retry=RetryPolicy(delays=(0.3,)))
    seen: list[float] = []

    @consumer.handler(TOPIC)
    def once_failing(message: Message, session: Session) -> None:
        seen.append(time.monotonic())
        if attempt_of(message) == 1:
            raise TimeoutError("later")
        record(message, session)

    with consumer:
        consumer.start()
        publish(broker, Message(TOPIC, b"1"))
        wait_for(lambda: consumer.stats.processed == 1)
    assert seen[1] - seen[0] >= 0.3
    assert consumer.stats.held >= 1


def test_non_retryable_error_goes_to_the_dlq_at_once_and_consuming_goes_on(
    engine: Engine,
) -> None:
    broker = InMemoryBroker()
    consumer = make_consumer(
        broker, engine, retry=RetryPolicy(delays=(5,), non_retryable=(ValueError,))
    )

    @consumer.handler(TOPIC)
    def handler(message: Message, session: Session) -> None:
        if message.body == b"bad":
            raise ValueError("amount must be positive, see amqp://u:s3cret@host/")
        if message.body == b"reject":
            raise Reject("unknown account")
        record(message, session)

    bad, rejected, good = Message(TOPIC, b"bad"), Message(TOPIC, b"reject"), Message(TOPIC, b"ok")
    with consumer:
        consumer.start()
        publish(broker, bad, rejected, good)
        wait_for(lambda: consumer.stats.dead_lettered == 2 and consumer.stats.processed == 1)
    assert applied_ids(engine) == [good.id]
    dead = {m.id: m for m in broker.messages(dead_letter_queue(GROUP, TOPIC))}
    assert set(dead) == {bad.id, rejected.id}
    headers = dead[bad.id].headers
    assert headers["x-txmq-error-type"] == "ValueError"
    assert "s3cret" not in headers["x-txmq-error-message"]
    assert headers["x-txmq-attempt"] == "1"
    assert headers["x-txmq-topic"] == TOPIC
    assert headers["x-txmq-first-failure-at"] == headers["x-txmq-last-failure-at"]
    assert dead[rejected.id].headers["x-txmq-error-type"] == "txmq.consumer.errors.Reject"
    assert consumer.stats.retried == 0


def test_exhausted_retries_go_to_the_dlq_with_the_attempt_count(engine: Engine) -> None:
    broker = InMemoryBroker()
    consumer = make_consumer(broker, engine, retry=RetryPolicy.best_effort(attempts=3, delay=0.05))

    @consumer.handler(TOPIC)
    def always_fails(message: Message, session: Session) -> None:
        record(message, session)  # rolled back with the failure
        raise RuntimeError(f"attempt {attempt_of(message)}")

    with consumer:
        consumer.start()
        publish(broker, Message(TOPIC, b"1"))
        wait_for(lambda: consumer.stats.dead_lettered == 1)
    (dead,) = broker.messages(dead_letter_queue(GROUP, TOPIC))
    assert dead.headers["x-txmq-attempt"] == "3"
    assert dead.headers["x-txmq-error-message"] == "attempt 3"
    assert applied_ids(engine) == []
    assert consumer.stats.retried == 2


def test_undecodable_message_is_parked_raw_with_the_reason(engine: Engine) -> None:
    broker = InMemoryBroker()
    consumer = make_consumer(broker, engine)
    consumer.add_handler(TOPIC, record)
    broker.declare(consumer.topologies())
    broker.inject_raw(work_queue(GROUP, TOPIC), b"\x00garbage", {"content-type": "x/y"})
    good = Message(TOPIC, b"ok")
    publish(broker, good)
    with consumer:
        consumer.start()
        wait_for(lambda: consumer.stats.dead_lettered == 1 and consumer.stats.processed == 1)
    (dead,) = broker.messages(dead_letter_queue(GROUP, TOPIC))
    assert dead.body == b"\x00garbage"
    assert dead.headers["content-type"] == "x/y"
    assert dead.headers["x-txmq-error-type"] == "txmq.errors.MessageDecodeError"
    assert applied_ids(engine) == [good.id]


def test_a_late_copy_of_a_dead_lettered_message_is_not_applied(engine: Engine) -> None:
    broker = InMemoryBroker()
    consumer = make_consumer(broker, engine, retry=RetryPolicy.no_retry())
    m = Message(TOPIC, b"1")

    @consumer.handler(TOPIC)
    def handler(message: Message, session: Session) -> None:
        if consumer.stats.dead_lettered == 0:
            raise RuntimeError("down")
        record(message, session)

    with consumer:
        consumer.start()
        publish(broker, m)
        wait_for(lambda: consumer.stats.dead_lettered == 1)
        publish(broker, m)  # e.g. a stray retry copy after a crash
        wait_for(lambda: consumer.stats.dead_lettered == 2)
    assert applied_ids(engine) == []
    copies = broker.messages(dead_letter_queue(GROUP, TOPIC))
    assert [c.headers["x-txmq-error-message"] for c in copies] == ["down", "down"]


def test_batch_mode_commits_and_acks_once_per_batch(engine: Engine) -> None:
    broker = InMemoryBroker()
    consumer = make_consumer(broker, engine, batch_size=10, prefetch=10)
    consumer.add_handler(TOPIC, record)
    broker.declare(consumer.topologies())
    messages = [Message(TOPIC, str(i).encode()) for i in range(20)]
    publish(broker, *messages, messages[3])
    with consumer:
        consumer.start()
        wait_for(lambda: consumer.stats.processed == 20 and consumer.stats.duplicates == 1)
    assert sorted(applied_ids(engine)) == sorted(m.id for m in messages)
    assert broker.acks == 21
    assert broker.ack_calls <= 4


@pytest.mark.parametrize(
    "options", [{"batch_size": 10, "prefetch": 10}, {"batch_size": "auto"}], ids=["10", "auto"]
)
def test_a_poison_message_in_a_batch_is_isolated(engine: Engine, options: dict[str, Any]) -> None:
    broker = InMemoryBroker()
    consumer = make_consumer(broker, engine, retry=RetryPolicy.no_retry(), **options)

    @consumer.handler(TOPIC)
    def handler(message: Message, session: Session) -> None:
        record(message, session)
        if message.body == b"poison":
            raise ValueError("poison")

    broker.declare(consumer.topologies())
    messages = [Message(TOPIC, b"poison" if i == 4 else b"ok") for i in range(10)]
    publish(broker, *messages)
    with consumer:
        consumer.start()
        wait_for(lambda: consumer.stats.processed == 9 and consumer.stats.dead_lettered == 1)
    assert sorted(applied_ids(engine)) == sorted(m.id for m in messages if m.body == b"ok")
    assert consumer.stats.batch_fallbacks == 1


def test_auto_batch_size_batches_a_backlog_and_runs_a_lone_message_at_once(
    engine: Engine,
) -> None:
    broker = InMemoryBroker()
    consumer = make_consumer(broker, engine, batch_size="auto", prefetch=10)
    consumer.add_handler(TOPIC, record)
    broker.declare(consumer.topologies())
    backlog = [Message(TOPIC, str(i).encode()) for i in range(30)]
    publish(broker, *backlog, backlog[3])  # waiting before the consumer starts
    with consumer:
        consumer.start()
        wait_for(lambda: consumer.stats.processed == 30 and consumer.stats.duplicates == 1)
        assert broker.acks == 31
        assert broker.ack_calls <= 8  # a poll of up to 10 at a time, one ack per batch
        calls = broker.ack_calls
        lone = Message(TOPIC, b"lone")
        publish(broker, lone)
        wait_for(lambda: consumer.stats.processed == 31)
        wait_for(lambda: broker.acks == 32, what="the lone message acknowledged")
        assert broker.ack_calls == calls + 1
    assert sorted(applied_ids(engine)) == sorted(m.id for m in [*backlog, lone])
    assert consumer.stats.batch_fallbacks == 0


@pytest.mark.parametrize("batch_size", [0, -1, "fast", 2.5, True, None])
def test_a_batch_size_neither_a_positive_int_nor_auto_is_refused(
    engine: Engine, batch_size: object
) -> None:
    with pytest.raises(ConfigurationError, match="batch_size"):
        make_consumer(InMemoryBroker(), engine, batch_size=batch_size)


def test_txmq_consume_prefetch_may_be_1_with_auto_batch_size(engine: Engine) -> None:
    consumer = make_consumer(InMemoryBroker(), engine, batch_size="auto")
    override(consumer, concurrency=None, prefetch=1)
    assert consumer.prefetch == 1
    with pytest.raises(ConfigurationError, match="--prefetch"):
        override(consumer, concurrency=None, prefetch=0)


def test_compensation_refunds_the_producer_once(engine: Engine) -> None:
    broker = InMemoryBroker()
    refunds: list[str] = []
    producer_side = Consumer(broker=broker, engine=engine, group="bank-comp", inbox=inbox,
                             poll_interval=0.05)  # fmt: skip

    @producer_side.compensation("bank")
    def refund(compensation: object, session: Session) -> None:
        from txmq.consumer import Compensation

        assert isinstance(compensation, Compensation)
        refunds.append(compensation.original_id)

    consumer = make_consumer(broker, engine, retry=RetryPolicy.no_retry(), compensate=True)

    @consumer.handler(TOPIC)
    def credit(message: Message, session: Session) -> None:
        raise Reject("account closed")

    m = Message(TOPIC, b"100", headers={"x-txmq-producer-group": "bank"})
    with producer_side, consumer:
        producer_side.start()
        consumer.start()
        publish(broker, m)
        wait_for(lambda: consumer.stats.dead_lettered == 1)
        publish(broker, m)  # redelivered original: a second compensation, deduplicated
        wait_for(lambda: producer_side.stats.processed + producer_side.stats.duplicates == 2)
    assert refunds == [m.id]
    (dead, _) = broker.messages(dead_letter_queue(GROUP, TOPIC))
    assert dead.headers["x-txmq-compensation-id"]


def test_stop_finishes_in_flight_and_a_restart_applies_the_rest_once(engine: Engine) -> None:
    broker = InMemoryBroker()
    started = threading.Event()
    proceed = threading.Event()

    def slow(message: Message, session: Session) -> None:
        started.set()
        proceed.wait(60)
        record(message, session)

    consumer = make_consumer(broker, engine, prefetch=50)
    consumer.add_handler(TOPIC, slow)
    broker.declare(consumer.topologies())
    messages = [Message(TOPIC, str(i).encode()) for i in range(30)]
    publish(broker, *messages)
    consumer.start()
    assert started.wait(30)
    stopper = threading.Thread(target=consumer.stop)
    stopper.start()
    # The handler in flight finishes only once the stop is asked for: before that, every
    # message after it would be applied at once, however late the stopper thread is.
    wait_for(consumer._stop.is_set, what="the stop to be asked for")
    proceed.set()
    stopper.join(30)
    assert not consumer.running
    assert 1 <= len(applied_ids(engine)) < 30
    again = make_consumer(broker, engine, prefetch=50)
    again.add_handler(TOPIC, slow)
    with again:
        again.start()
        wait_for(lambda: len(applied_ids(engine)) == 30)
    assert sorted(applied_ids(engine)) == sorted(m.id for m in messages)


def test_concurrent_workers_apply_each_message_once(engine: Engine) -> None:
    broker = InMemoryBroker()
    consumer = make_consumer(broker, engine, concurrency=3, prefetch=5)
    consumer.add_handler(TOPIC, record)
    broker.declare(consumer.topologies())
    messages = [Message(TOPIC, str(i).encode()) for i in range(60)]
    publish(broker, *messages, *messages[:10])
    with consumer:
        consumer.start()
        wait_for(lambda: consumer.stats.processed + consumer.stats.duplicates == 70, timeout=20)
    assert sorted(applied_ids(engine)) == sorted(m.id for m in messages)


def test_unique_inbox_table_names_do_not_interfere(engine: Engine) -> None:
    other = make_inbox_table(MetaData(), name=f"inbox_{uuid.uuid4().hex[:8]}")
    create_schema(engine, other)
    broker = InMemoryBroker()
    consumer = Consumer(broker=broker, engine=engine, group=GROUP, inbox=other, poll_interval=0.05)
    consumer.add_handler(TOPIC, record)
    with consumer:
        consumer.start()
        publish(broker, Message(TOPIC, b"x"))
        wait_for(lambda: consumer.stats.processed == 1)
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(other)).scalar() == 1
        assert c.execute(select(func.count()).select_from(inbox)).scalar() == 0


@pytest.mark.parametrize("retry_mode", ["ttl", "consume"])
def test_dlq_replay_applies_once_and_purge_empties(engine: Engine, retry_mode: str) -> None:
    broker = InMemoryBroker(retry_mode=retry_mode)  # type: ignore[arg-type]
    consumer = make_consumer(broker, engine, retry=RetryPolicy.no_retry())
    fixed = threading.Event()

    @consumer.handler(TOPIC)
    def handler(message: Message, session: Session) -> None:
        if not fixed.is_set():
            raise RuntimeError("bug")
        record(message, session)

    first, second, third = (Message(TOPIC, str(i).encode()) for i in range(3))
    dlq = DeadLetters(broker, group=GROUP, topic=TOPIC)
    with consumer:
        consumer.start()
        publish(broker, first, second, third)
        wait_for(lambda: consumer.stats.dead_lettered == 3)
        letters = dlq.list()
        assert [letter.message.id for letter in letters] == [first.id, second.id, third.id]
        assert letters[0].error_type == "RuntimeError"
        assert dlq.show(second.id) == letters[1]
        fixed.set()
        result = dlq.replay([first.id, second.id])
        assert result.replayed == [first.id, second.id]
        wait_for(lambda: consumer.stats.processed == 2)
        assert [letter.message.id for letter in dlq.list()] == [third.id]
    assert sorted(applied_ids(engine)) == sorted([first.id, second.id])
    assert dlq.purge() == 1
    assert dlq.list() == []


def test_compensated_messages_are_not_replayed_unless_forced(engine: Engine) -> None:
    broker = InMemoryBroker()
    consumer = make_consumer(broker, engine, retry=RetryPolicy.no_retry(), compensate=True)

    @consumer.handler(TOPIC)
    def handler(message: Message, session: Session) -> None:
        raise Reject("no")

    broker.declare([*consumer.topologies(), Topology("bank-comp", "bank.compensation")])
    m = Message(TOPIC, b"1", headers={"x-txmq-producer-group": "bank"})
    with consumer:
        consumer.start()
        publish(broker, m)
        wait_for(lambda: consumer.stats.dead_lettered == 1)
    dlq = DeadLetters(broker, group=GROUP, topic=TOPIC)
    assert dlq.replay().skipped_compensated == [m.id]
    assert dlq.replay(force=True).replayed == [m.id]


def test_a_final_failure_racing_a_copy_applied_elsewhere_is_not_dead_lettered(
    engine: Engine,
) -> None:
    """Two copies of one message (a duplicate publish) in two instances: copy 1 commits
    while copy 2's handler is failing for good. Copy 2 must not dead-letter (nor
    compensate) a message that was applied."""
    broker = InMemoryBroker()
    m = Message(TOPIC, b"1", headers={"x-txmq-producer-group": "bank"})

    class RacingPolicy(RetryPolicy):
        def is_final(self, exc: BaseException, attempt: int) -> bool:
            # Copy 1, in another instance, commits between copy 2's rollback and its
            # dead-lettering.
            with engine.begin() as c:
                c.execute(
                    inbox.insert().values(
                        consumer_group=GROUP,
                        message_key=m.id,
                        topic=TOPIC,
                        status="done",
                        processed_at=datetime.now(UTC),
                    )
                )
            return True

    consumer = make_consumer(broker, engine, retry=RacingPolicy.no_retry(), compensate=True)

    @consumer.handler(TOPIC)
    def handler(message: Message, session: Session) -> None:
        raise Reject("account closed")

    broker.declare([*consumer.topologies(), Topology("bank-comp", "bank.compensation")])
    with consumer:
        consumer.start()
        publish(broker, m)
        wait_for(lambda: broker.acks == 1)
    assert broker.messages(dead_letter_queue(GROUP, TOPIC)) == []
    assert broker.messages(work_queue("bank-comp", "bank.compensation")) == []
    assert consumer.stats.dead_lettered == 0
    assert consumer.stats.duplicates == 1


def test_failures_are_logged_without_secrets(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    broker = InMemoryBroker()
    consumer = make_consumer(broker, engine, batch_size=5, prefetch=5,
                             retry=RetryPolicy.no_retry())  # fmt: skip

    @consumer.handler(TOPIC)
    def handler(message: Message, session: Session) -> None:
        raise RuntimeError("cannot reach amqp://app:s3cret@core-banking/")

    broker.declare(consumer.topologies())
    publish(broker, *(Message(TOPIC, b"x") for _ in range(3)))
    with caplog.at_level("DEBUG", logger="txmq"), consumer:
        consumer.start()
        wait_for(lambda: consumer.stats.dead_lettered == 3)
    assert consumer.stats.batch_fallbacks >= 1
    assert "core-banking" in caplog.text
    assert "s3cret" not in caplog.text


def test_each_message_is_acknowledged_as_soon_as_it_is_settled(engine: Engine) -> None:
    broker = InMemoryBroker()
    acked_when_handled: list[int] = []
    consumer = make_consumer(broker, engine)

    @consumer.handler(TOPIC)
    def handler(message: Message, session: Session) -> None:
        acked_when_handled.append(broker.acks)
        record(message, session)

    broker.declare(consumer.topologies())
    publish(broker, *[Message(TOPIC, b"%d" % i) for i in range(5)])  # one poll takes all
    with consumer:
        consumer.start()
        wait_for(lambda: broker.acks == 5)
    # Every earlier message was acknowledged before the next handler ran.
    assert acked_when_handled == [0, 1, 2, 3, 4]


class _PartitionedBroker(InMemoryBroker):
    def __init__(self) -> None:
        super().__init__()
        # Like Kafka: each subscription owns its partitions.
        self.capabilities = replace(self.capabilities, competing_consumers=False)


@pytest.mark.parametrize(
    ("broker", "options", "prefetch"),
    [
        (InMemoryBroker(), {}, 100),
        (InMemoryBroker(), {"concurrency": 3}, 1),
        (InMemoryBroker(), {"concurrency": 3, "batch_size": 20}, 20),
        (InMemoryBroker(), {"batch_size": 500}, 500),
        (InMemoryBroker(), {"batch_size": "auto"}, 100),
        (InMemoryBroker(), {"concurrency": 3, "batch_size": "auto"}, 1),
        (InMemoryBroker(), {"concurrency": 3, "prefetch": 50}, 50),
        (_PartitionedBroker(), {"concurrency": 3}, 100),
    ],
)
def test_workers_prefetch_little_when_they_compete_for_one_queue(
    engine: Engine, broker: InMemoryBroker, options: dict[str, object], prefetch: int
) -> None:
    consumer = make_consumer(broker, engine, **options)
    assert consumer.worker_prefetch(broker) == prefetch


def test_a_replay_copy_not_confirmed_keeps_only_its_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = InMemoryBroker()
    broker.declare([Topology(GROUP, TOPIC)])
    letters = [Message(TOPIC, b"%d" % i) for i in range(3)]
    with broker.publisher() as publisher:
        publisher.send_to_queue(dead_letter_queue(GROUP, TOPIC), letters)
    unlucky = letters[1].id
    real_publisher = broker.publisher

    def publisher(**kwargs: Any) -> Publisher:
        inner = real_publisher(**kwargs)
        real_send = inner.send_to_queue

        def send_to_queue(queue: str, messages: Sequence[Message], **kw: Any) -> Any:
            sent = real_send(queue, [m for m in messages if m.id != unlucky], **kw)
            refused = PublishOutcome(unlucky, PublishError("nacked"))
            return [*sent[:1], refused, *sent[1:]]

        inner.send_to_queue = send_to_queue  # type: ignore[method-assign]
        return inner

    monkeypatch.setattr(broker, "publisher", publisher)
    dlq = DeadLetters(broker, group=GROUP, topic=TOPIC)
    with pytest.raises(PublishError, match="nacked"):
        dlq.replay()
    assert [letter.message.id for letter in dlq.list()] == [unlucky]
    assert sorted(m.id for m in broker.messages(work_queue(GROUP, TOPIC))) == sorted(
        [letters[0].id, letters[2].id]
    )
