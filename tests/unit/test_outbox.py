"""Producer side on SQLite with the in-memory broker: states, check-back, relay bookkeeping."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    Table,
    create_engine,
    insert,
    inspect,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import txmq
from txmq import unroutable
from txmq.adapters.base import Publisher, PublishOutcome, Transaction
from txmq.adapters.memory.adapter import InMemoryBroker
from txmq.outbox import CheckBackPolicy, Producer, Relay, make_outbox_tables
from txmq.states import CheckLimitPolicy, LocalTransactionState, RecordState

COMMIT, ROLLBACK, UNKNOWN = (
    LocalTransactionState.COMMIT,
    LocalTransactionState.ROLLBACK,
    LocalTransactionState.UNKNOWN,
)
NOW = timedelta(0)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def metadata(engine: Engine) -> MetaData:
    metadata = MetaData()
    Table("orders", metadata, Column("id", Integer, primary_key=True))
    make_outbox_tables(metadata)
    metadata.create_all(engine)
    return metadata


@pytest.fixture
def broker() -> InMemoryBroker:
    """Group "audit" reads topics "t" and "orders.created"; a publish to another topic
    fails (``unroutable="return"``), which is how these tests make a publish fail."""
    broker = InMemoryBroker(unroutable="return")
    broker.declare([txmq.Topology("audit", "t"), txmq.Topology("audit", "orders.created")])
    return broker


def published(broker: InMemoryBroker, topic: str = "t") -> list[txmq.Message]:
    return broker.messages(f"audit.{topic}")


def make_producer(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker, **kwargs: object
) -> Producer:
    return Producer(
        group="orders",
        engine=engine,
        broker=broker,
        tables=make_outbox_tables(metadata),
        **kwargs,  # type: ignore[arg-type]
    )


def states(producer: Producer) -> dict[str, int]:
    return producer.store.counts()


def test_stage_exists_only_if_the_transaction_commits(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    producer = make_producer(engine, metadata, broker)
    orders = metadata.tables["orders"]
    with Session(engine) as session:
        session.begin()
        session.execute(insert(orders).values(id=1))
        producer.stage(session, txmq.Message("orders.created", b"rolled back"))
        session.rollback()
    assert states(producer) == {}

    committed = txmq.Message("orders.created", b"committed")
    with Session(engine) as session, session.begin():
        session.execute(insert(orders).values(id=2))
        producer.stage(session, committed)
    assert states(producer) == {"READY": 1}

    assert producer.relay().drain() == 1
    assert [m.id for m in published(broker, "orders.created")] == [committed.id]
    assert published(broker, "orders.created")[0].headers["x-txmq-producer-group"] == "orders"
    assert states(producer) == {"SENT": 1}


def test_staging_no_messages_writes_nothing_and_keeps_the_transaction(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    """``stage(session, *batch)`` with an empty batch must not fail the caller's transaction."""
    producer = make_producer(engine, metadata, broker)
    orders = metadata.tables["orders"]
    with Session(engine) as session, session.begin():
        session.execute(insert(orders).values(id=1))
        producer.stage(session)
    with engine.connect() as connection:
        assert list(connection.execute(select(orders.c.id))) == [(1,)]
    assert states(producer) == {}


def test_half_message_commit_rollback_unknown(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    producer = make_producer(engine, metadata, broker)
    seen: list[str] = []

    def executor(message: txmq.Message, arg: LocalTransactionState) -> LocalTransactionState:
        # The half record is durable before the local transaction runs.
        seen.append(producer.store.get(message.id).state.value)
        return arg

    results = {
        state: producer.send_in_transaction(
            txmq.Message("t", state.value.encode()), executor, state
        )
        for state in (COMMIT, ROLLBACK, UNKNOWN)
    }
    assert seen == ["PREPARED"] * 3
    assert results[COMMIT].record_state is RecordState.READY
    assert results[ROLLBACK].record_state is RecordState.ROLLED_BACK
    assert results[UNKNOWN].record_state is RecordState.PREPARED
    producer.relay().drain()
    assert [m.body for m in published(broker)] == [b"COMMIT"]


def test_executor_exception_counts_as_unknown(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    producer = make_producer(engine, metadata, broker)

    def explode(message: txmq.Message, arg: None) -> LocalTransactionState:
        raise RuntimeError("boom")

    result = producer.send_in_transaction(txmq.Message("t", b"x"), explode, None)
    assert result.local_state is UNKNOWN
    assert producer.store.get(result.message_id).state is RecordState.PREPARED


@pytest.mark.parametrize(
    ("answer", "expected"),
    [(COMMIT, RecordState.READY), (ROLLBACK, RecordState.ROLLED_BACK)],
)
def test_check_back_resolves_unknown(
    engine: Engine,
    metadata: MetaData,
    broker: InMemoryBroker,
    answer: LocalTransactionState,
    expected: RecordState,
) -> None:
    counts: list[int] = []

    def checker(message: txmq.Message, count: int) -> LocalTransactionState:
        counts.append(count)
        return UNKNOWN if count == 1 else answer

    producer = make_producer(
        engine,
        metadata,
        broker,
        checker=checker,
        check_policy=CheckBackPolicy(immunity=NOW, interval=timedelta(microseconds=1)),
    )
    result = producer.send_in_transaction(txmq.Message("t", b"x"), lambda m, a: UNKNOWN, None)
    assert producer.check_back_once() == 1
    assert producer.store.get(result.message_id).state is RecordState.PREPARED
    assert producer.check_back_once() == 1
    assert counts == [1, 2]
    assert producer.store.get(result.message_id).state is expected


def test_immunity_delays_the_first_check(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    producer = make_producer(
        engine, metadata, broker, checker=lambda m, c: COMMIT, check_policy=CheckBackPolicy()
    )
    result = producer.send_in_transaction(txmq.Message("t", b"x"), lambda m, a: UNKNOWN, None)
    assert producer.check_back_once() == 0
    override = producer.send_in_transaction(
        txmq.Message("t", b"y"), lambda m, a: UNKNOWN, None, immunity=timedelta(microseconds=1)
    )
    assert producer.check_back_once() == 1
    assert producer.store.get(result.message_id).state is RecordState.PREPARED
    assert producer.store.get(override.message_id).state is RecordState.READY


def test_checker_exception_then_limit_parks_and_resume_delivers(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    answers = iter([UNKNOWN, "raise", UNKNOWN, COMMIT])

    def checker(message: txmq.Message, count: int) -> LocalTransactionState:
        answer = next(answers)
        if answer == "raise":
            raise RuntimeError("checker down")
        return LocalTransactionState(answer)

    producer = make_producer(
        engine,
        metadata,
        broker,
        checker=checker,
        check_policy=CheckBackPolicy(
            immunity=NOW, interval=timedelta(microseconds=1), max_checks=3
        ),
    )
    result = producer.send_in_transaction(txmq.Message("t", b"x"), lambda m, a: UNKNOWN, None)
    for _ in range(3):
        producer.check_back_once()
    record = producer.store.get(result.message_id)
    assert record.state is RecordState.PARKED
    assert record.check_count == 3
    assert [r.message.id for r in producer.parked()] == [result.message_id]
    assert producer.check_back_once() == 0  # parked records are not checked

    producer.resume(result.message_id)
    assert producer.check_back_once() == 1  # the fourth answer: COMMIT
    producer.relay().drain()
    assert [m.id for m in published(broker)] == [result.message_id]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (CheckLimitPolicy.COMMIT, RecordState.READY),
        (CheckLimitPolicy.ROLLBACK, RecordState.ROLLED_BACK),
    ],
)
def test_limit_policy_commit_or_rollback(
    engine: Engine,
    metadata: MetaData,
    broker: InMemoryBroker,
    policy: CheckLimitPolicy,
    expected: RecordState,
) -> None:
    producer = make_producer(
        engine,
        metadata,
        broker,
        check_policy=CheckBackPolicy(immunity=NOW, max_checks=1, on_limit=policy),
    )
    result = producer.send_in_transaction(txmq.Message("t", b"x"), lambda m, a: UNKNOWN, None)
    producer.check_back_once()
    assert producer.store.get(result.message_id).state is expected


def test_operator_commit_and_rollback_of_parked(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    producer = make_producer(
        engine, metadata, broker, check_policy=CheckBackPolicy(immunity=NOW, max_checks=1)
    )
    a = producer.send_in_transaction(txmq.Message("t", b"a"), lambda m, x: UNKNOWN, None)
    b = producer.send_in_transaction(txmq.Message("t", b"b"), lambda m, x: UNKNOWN, None)
    producer.check_back_once()
    producer.commit(a.message_id)
    producer.rollback(b.message_id)
    with pytest.raises(txmq.RecordNotFound):
        producer.rollback(a.message_id)  # READY now: no longer an operator's decision
    producer.relay().drain()
    assert [m.body for m in published(broker)] == [b"a"]


def test_self_answering_commit_and_exception(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    producer = make_producer(engine, metadata, broker)
    orders = metadata.tables["orders"]
    ok = producer.send_in_local_transaction(
        txmq.Message("t", b"ok"), lambda s: s.execute(insert(orders).values(id=10))
    )
    assert ok.record_state is RecordState.READY

    def fails(session: Session) -> None:
        session.execute(insert(orders).values(id=11))
        raise ValueError("business rule")

    with pytest.raises(ValueError, match="business rule"):
        producer.send_in_local_transaction(txmq.Message("t", b"bad"), fails)
    with engine.connect() as connection:
        assert list(connection.execute(select(orders.c.id))) == [(10,)]
    assert states(producer) == {"READY": 1, "ROLLED_BACK": 1}


def test_self_answering_check_back_needs_no_checker(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    """A local transaction that never ran: the check-back's ROLLBACK marker wins, and the
    late local transaction then fails on the key instead of committing."""
    producer = make_producer(engine, metadata, broker, check_policy=CheckBackPolicy(immunity=NOW))
    message = txmq.Message("t", b"x")
    producer.store.prepare(message, "orders", immunity=NOW, tx_key=message.id)
    assert producer.check_back_once() == 1
    assert producer.store.get(message.id).state is RecordState.ROLLED_BACK

    # A committed marker without the READY transition (crash right after the local commit).
    late = txmq.Message("t", b"y")
    producer.store.prepare(late, "orders", immunity=NOW, tx_key=late.id)
    with engine.begin() as connection:
        producer.store.insert_marker(connection, late.id, COMMIT)
    assert producer.check_back_once() == 1
    assert producer.store.get(late.id).state is RecordState.READY


def test_a_short_retention_does_not_let_a_late_local_transaction_commit(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    """The check-back rolled back a local transaction that had not started yet (its start
    waited longer than the immunity, e.g. for a pooled connection) and a relay with
    ``retention=0`` purged the record: the ROLLBACK marker must still make the late local
    transaction fail on its key, or its work would commit with the message gone."""
    producer = make_producer(engine, metadata, broker, check_policy=CheckBackPolicy(immunity=NOW))
    message = txmq.Message("t", b"x")
    producer.store.prepare(message, "orders", immunity=NOW, tx_key=message.id)
    assert producer.check_back_once() == 1
    assert producer.store.purge(timedelta(0)) == 1

    with engine.begin() as connection:  # the late local transaction's first statement
        standing = producer.store.insert_marker(connection, message.id, COMMIT)
    assert standing is ROLLBACK


def test_same_key_order_is_kept_when_an_earlier_record_backs_off(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    producer = make_producer(engine, metadata, broker)
    relay = producer.relay()
    with Session(engine) as session, session.begin():
        producer.stage(session, txmq.Message("late", b"k1-first", key="k1"))
    relay.drain()  # unroutable: nobody reads "late" yet
    broker.declare([txmq.Topology("audit", "late")])
    with Session(engine) as session, session.begin():
        producer.stage(
            session,
            txmq.Message("late", b"k1-second", key="k1"),
            txmq.Message("t", b"k1-other-topic", key="k1"),
            txmq.Message("late", b"k2", key="k2"),
            txmq.Message("late", b"nokey"),
        )
    relay.drain()
    # k1-first backs off after its failed publish; k1-second waits behind it; the rest go.
    assert [m.body for m in published(broker, "late")] == [b"k2", b"nokey"]
    assert [m.body for m in published(broker, "t")] == [b"k1-other-topic"]
    first, second = producer.store.list(RecordState.READY)
    assert (first.message.body, second.message.body) == (b"k1-first", b"k1-second")
    assert first.publish_attempts == 1
    assert first.last_error is not None
    assert "unroutable" in first.last_error


class SmallBroker(InMemoryBroker):
    """Accepts messages up to 100 bytes and, like the real adapters, raises MessageTooLarge
    from ``publish`` (sending nothing) when a batch holds a larger one."""

    max_body_bytes = 100  # type: ignore[assignment]

    def publisher(self, *, identity: str | None = None) -> Publisher:
        publisher = super().publisher(identity=identity)
        publish = publisher.publish

        def checked(
            messages: Sequence[txmq.Message], *, timeout: float | None = None
        ) -> list[PublishOutcome]:
            for message in messages:
                message.check_size(self.max_body_bytes)
            return publish(messages, timeout=timeout)

        publisher.publish = checked  # type: ignore[method-assign]
        return publisher


def test_a_record_too_large_for_the_relays_broker_does_not_block_the_others(
    engine: Engine, metadata: MetaData
) -> None:
    """Staged under a larger limit (a producer without a broker, another relay URL): the
    relay keeps it READY with the error and publishes everything else."""
    broker = SmallBroker()
    broker.declare([txmq.Topology("audit", "t")])
    producer = Producer(
        group="orders", engine=engine, tables=make_outbox_tables(metadata), max_body_bytes=10_000
    )
    big = txmq.Message("t", b"x" * 200, key="k")
    with Session(engine) as session, session.begin():
        producer.stage(
            session, big, txmq.Message("t", b"after-big", key="k"), txmq.Message("t", b"small")
        )
    assert (
        Relay(broker, producer.store, groups=[producer.group], max_refused_attempts=2).run_once()
        == 1
    )
    # The record with big's key waits behind it, in order.
    assert [m.body for m in published(broker)] == [b"small"]
    stuck, waiting = producer.store.list(RecordState.READY)
    assert (stuck.message.id, waiting.message.body) == (big.id, b"after-big")
    assert stuck.last_error is not None
    assert "MessageTooLarge" in stuck.last_error
    assert waiting.publish_attempts == 0


def test_a_refused_record_goes_failed_after_bounded_attempts_and_frees_its_key(
    engine: Engine, metadata: MetaData
) -> None:
    broker = SmallBroker()
    broker.declare([txmq.Topology("audit", "t")])
    producer = Producer(
        group="orders", engine=engine, tables=make_outbox_tables(metadata), max_body_bytes=10_000
    )
    big = txmq.Message("t", b"x" * 200, key="k")
    with Session(engine) as session, session.begin():
        producer.stage(session, big, txmq.Message("t", b"after-big", key="k"))
    relay = Relay(broker, producer.store, groups=[producer.group], max_refused_attempts=2)
    with pytest.raises(txmq.RecordsFailed) as raised:
        relay.drain(timeout=30)
    assert [message_id for message_id, _ in raised.value.failed] == [big.id]
    assert raised.value.sent == 1
    assert [m.body for m in published(broker)] == [b"after-big"]
    (failed,) = producer.failed()
    assert (failed.message.id, failed.state, failed.publish_attempts) == (
        big.id,
        RecordState.FAILED,
        2,
    )
    assert failed.last_error is not None
    assert "MessageTooLarge" in failed.last_error
    producer.retry(big.id)
    assert producer.store.get(big.id).state is RecordState.READY
    assert producer.store.get(big.id).publish_attempts == 0
    with pytest.raises(txmq.RecordsFailed):
        relay.drain(timeout=30)
    producer.discard(big.id)
    with pytest.raises(txmq.RecordNotFound):
        producer.store.get(big.id)
    with pytest.raises(txmq.RecordNotFound):
        producer.retry(big.id)


def test_bad_input_is_rejected_before_anything_is_written(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker, tmp_path: Path
) -> None:
    producer = make_producer(engine, metadata, broker, max_body_bytes=100)
    with pytest.raises(txmq.InvalidMessage):
        txmq.Message("bad topic!", b"x")
    with pytest.raises(txmq.InvalidMessage):
        txmq.Message("t", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(txmq.MessageTooLarge):
        producer.send_in_transaction(txmq.Message("t", b"x" * 200), lambda m, a: COMMIT, None)
    other = create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    with Session(other) as session, pytest.raises(txmq.WrongDatabase):
        producer.stage(session, txmq.Message("t", b"x"))
    with Session(engine) as session, session.begin(), pytest.raises(txmq.MessageTooLarge):
        producer.stage(session, txmq.Message("t", b"ok"), txmq.Message("t", b"x" * 200))
    assert states(producer) == {}
    other.dispose()


def test_purge_removes_finished_records_only(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    producer = make_producer(engine, metadata, broker)
    with Session(engine) as session, session.begin():
        producer.stage(session, txmq.Message("t", b"a"))
    producer.relay().drain()
    producer.send_in_transaction(txmq.Message("t", b"b"), lambda m, a: UNKNOWN, None)
    assert producer.store.purge(timedelta(days=1)) == 0
    assert producer.store.purge(timedelta(0)) == 1
    assert states(producer) == {"PREPARED": 1}


def test_create_schema_creates_the_default_tables_once(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'schema.db'}")
    txmq.create_schema(engine)
    txmq.create_schema(engine)  # idempotent
    names = set(inspect(engine).get_table_names())
    assert {"txmq_outbox", "txmq_tx_marker", "txmq_inbox"} <= names
    engine.dispose()


def test_a_decision_taken_while_the_executor_ran_stands(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    """An operator (or a check-back, on SQLite where nothing locks) rolls the half message
    back while its executor runs: the executor's late COMMIT does not resurrect it."""
    producer = make_producer(engine, metadata, broker)

    def executor(message: txmq.Message, arg: None) -> LocalTransactionState:
        producer.rollback(message.id)
        return COMMIT

    result = producer.send_in_transaction(txmq.Message("t", b"x"), executor, None)
    assert result.local_state is COMMIT
    assert result.record_state is RecordState.ROLLED_BACK
    assert producer.relay().drain() == 0


class FakeKafkaTransaction(Transaction):
    """The explicit transaction of a transactional Kafka publisher, in memory."""

    def __init__(self) -> None:
        self.open: list[txmq.Message] = []
        self.committed: list[txmq.Message] = []
        self.commit_fails = False

    def begin(self) -> None:
        self.open = []

    def produce(self, messages: Sequence[txmq.Message]) -> None:
        self.open.extend(messages)

    def commit(self, timeout: float | None = None) -> None:
        if self.commit_fails:
            raise txmq.BrokerUnavailable("outcome of the Kafka transaction unknown")
        self.committed.extend(self.open)
        self.open = []

    def abort(self, timeout: float | None = None) -> None:
        self.open = []

    def close(self) -> None:
        pass


class KafkaLikeBroker(InMemoryBroker):
    """Hands the producer's half messages one in-memory Kafka transaction."""

    system = "kafka"

    def __init__(self) -> None:
        super().__init__()
        self.capabilities = replace(self.capabilities, native_transactions=True)
        self.kafka_transaction = FakeKafkaTransaction()

    def transaction(self, identity: str) -> Transaction | None:
        return self.kafka_transaction if identity.startswith("orders-") else None


def test_kafka_half_message_decided_while_the_executor_ran_is_not_committed_to_kafka(
    engine: Engine, metadata: MetaData
) -> None:
    """As on the relay path, a decision taken before the executor's COMMIT (by an operator,
    or by a check-back that ran before the row lock was taken / on SQLite) stands: the
    Kafka transaction holding the half message must be aborted, not committed."""
    broker = KafkaLikeBroker()
    producer = make_producer(engine, metadata, broker)
    assert producer.kafka_native

    committed = producer.send_in_transaction(txmq.Message("t", b"yes"), lambda m, a: COMMIT, None)
    assert committed.record_state is RecordState.SENT
    assert [m.id for m in broker.kafka_transaction.committed] == [committed.message_id]

    def executor(message: txmq.Message, arg: None) -> LocalTransactionState:
        producer.rollback(message.id)
        return COMMIT

    result = producer.send_in_transaction(txmq.Message("t", b"no"), executor, None)
    assert result.record_state is RecordState.ROLLED_BACK
    assert [m.id for m in broker.kafka_transaction.committed] == [committed.message_id]
    assert producer.store.get(result.message_id).state is RecordState.ROLLED_BACK

    # A Kafka commit of unknown outcome: the relay publishes the message (same id).
    broker.kafka_transaction.commit_fails = True
    unknown = producer.send_in_transaction(txmq.Message("t", b"maybe"), lambda m, a: COMMIT, None)
    assert unknown.record_state is RecordState.READY
    assert producer.store.get(unknown.message_id).state is RecordState.READY


def test_zero_retention_deletes_records_once_confirmed(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    producer = make_producer(engine, metadata, broker)
    with Session(engine) as session, session.begin():
        producer.stage(session, txmq.Message("t", b"a"), txmq.Message("late", b"unroutable"))
    assert producer.relay(retention=timedelta(0)).drain() == 1
    assert [m.body for m in published(broker)] == [b"a"]
    # The confirmed record is gone; the failed one stays READY for its retry.
    assert states(producer) == {"READY": 1}


def test_relay_connect_opens_every_lane_before_the_first_batch(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``connect()`` is where a relay pays for its broker connections (on Kafka,
    ``init_transactions``) and where an unreachable broker shows."""
    from txmq.adapters.memory import adapter as memory

    connected: list[object] = []
    original = memory._Publisher.connect

    def recording_connect(self: memory._Publisher) -> None:
        original(self)
        connected.append(self)

    monkeypatch.setattr(memory._Publisher, "connect", recording_connect)
    relay = make_producer(engine, metadata, broker).relay()
    assert relay.connect() is relay
    assert len(connected) == 1  # SQLite: one lane
    relay.stop()
    broker.down = True
    with pytest.raises(txmq.BrokerUnavailable):
        make_producer(engine, metadata, broker).relay().connect()


@pytest.mark.parametrize("linger", [-0.001, 2.0, float("nan")])
def test_a_linger_outside_zero_to_the_poll_interval_is_refused(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker, linger: float
) -> None:
    with pytest.raises(ValueError, match="linger must be from 0 to poll_interval"):
        make_producer(engine, metadata, broker).relay(linger=linger, poll_interval=1.0)


def test_a_duplicate_message_id_fails_the_staging_transaction(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    producer = make_producer(engine, metadata, broker)
    first = txmq.Message("t", b"first")
    with Session(engine) as session, session.begin():
        producer.stage(session, first)

    def order_with_a_reused_id() -> None:
        with Session(engine) as session, session.begin():
            session.execute(insert(metadata.tables["orders"]).values(id=1))
            producer.stage(session, txmq.Message("t", b"again", id=first.id))

    with pytest.raises(IntegrityError):
        order_with_a_reused_id()
    with engine.connect() as connection:
        assert connection.execute(select(metadata.tables["orders"].c.id)).all() == []
    assert states(producer) == {"READY": 1}


def test_a_claim_after_a_sequence_number_skips_the_records_below_it(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    producer = make_producer(engine, metadata, broker)
    with Session(engine) as session, session.begin():
        producer.stage(session, *(txmq.Message("t", str(i).encode()) for i in range(4)))
    with engine.begin() as connection:
        everything = producer.store.claim_ready(connection, 10, group="orders")
        above = producer.store.claim_ready(connection, 10, group="orders", after=everything[1].seq)
    assert [r.message.body for r in above] == [b"2", b"3"]


def test_the_fake_broker_holds_a_message_for_an_unbound_topic_like_the_real_ones(
    engine: Engine, metadata: MetaData
) -> None:
    broker = InMemoryBroker()
    producer = make_producer(engine, metadata, broker)
    with Session(engine) as session, session.begin():
        producer.stage(session, txmq.Message("late", b"held"))
    assert producer.relay().drain() == 1
    assert states(producer) == {"SENT": 1}
    assert [m.body for m in unroutable.held(broker)] == [b"held"]
    broker.declare([txmq.Topology("audit", "late")])
    assert [m.body for m in published(broker, "late")] == [b"held"]
    assert unroutable.held(broker) == []


def test_a_record_decided_before_its_executor_starts_does_not_run_it(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check-back (immunity 0) or an operator may decide a half record between its write
    and its executor: the executor must not commit a local transaction whose message is
    already discarded."""
    producer = make_producer(engine, metadata, broker)
    prepare = producer.store.prepare

    def prepare_then_decided(message: txmq.Message, group: str, **kwargs: object) -> None:
        prepare(message, group, **kwargs)  # type: ignore[arg-type]
        producer.rollback(message.id)

    monkeypatch.setattr(producer.store, "prepare", prepare_then_decided)
    ran: list[str] = []
    with pytest.raises(txmq.TransactionError, match="ROLLED_BACK"):
        producer.send_in_transaction(
            txmq.Message("t", b"x"), lambda m, a: ran.append(m.id) or COMMIT, None
        )
    assert ran == []


def test_a_direct_pass_while_another_worker_holds_the_sqlite_database_is_refused(
    engine: Engine, metadata: MetaData, broker: InMemoryBroker
) -> None:
    working = make_producer(engine, metadata, broker).start(poll_interval=0.05)
    other = make_producer(engine, metadata, broker)
    try:
        assert working._relay is not None
        deadline = time.monotonic() + 10
        while not working._relay.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert working._relay.active
        with pytest.raises(txmq.WorkerBusy, match="relay lock of orders"):
            other.relay().drain()
        deadline = time.monotonic() + 10
        while not working.checkback.lock.held and time.monotonic() < deadline:
            time.sleep(0.01)  # until the working producer's check-back loop holds its lock
        with pytest.raises(txmq.WorkerBusy, match="checkback lock of orders"):
            other.check_back_once()
        # Another group's relay and check-back are not excluded.
        billing = Producer(group="billing", engine=engine, broker=broker, tables=other.tables)
        assert billing.relay().drain() == 0
        assert billing.check_back_once() == 0
    finally:
        working.close()
    assert other.relay().drain() == 0  # released on close
