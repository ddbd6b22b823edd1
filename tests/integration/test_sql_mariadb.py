"""txmq's SQL on a real MariaDB (InnoDB, REPEATABLE READ): SKIP LOCKED claims that keep
per-key order, the self-answering marker's "insert, or wait, or detect the conflict" with
its deadlocks run again, the inbox's duplicate detection, and the relay's polling wake-up."""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, Table, func, select, text
from sqlalchemy.orm import Session

import txmq
from txmq.consumer.inbox import Inbox
from txmq.outbox.store import OutboxStore
from txmq.sql.dialect import dialect_of
from txmq.sql.tables import make_outbox_tables, metadata
from txmq.states import LocalTransactionState, RecordState
from txmq.testing import wait_for

pytestmark = pytest.mark.database

COMMIT, ROLLBACK = LocalTransactionState.COMMIT, LocalTransactionState.ROLLBACK


@pytest.fixture
def engine(txmq_mysql_engine: Engine) -> Engine:
    return txmq_mysql_engine


@pytest.fixture
def store(engine: Engine) -> OutboxStore:
    return OutboxStore(engine, make_outbox_tables(metadata))


class Background:
    """A call run in a thread; :meth:`result` re-raises what it raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self._value = call()
        except BaseException as exc:  # handed to the test by result()
            self._error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float = 60.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the call did not end"
        if self._error is not None:
            raise self._error
        return self._value


#: Statements of this test's database still running after a second: blocked on a lock, for
#: the short statements these tests run. (The server is shared with other tests, whose
#: waits must not count; and information_schema.innodb_trx does not list every waiting
#: insert as LOCK WAIT, so the statements are counted instead.)
_LOCK_WAITS = (
    "SELECT COUNT(*) FROM information_schema.processlist"
    " WHERE db = DATABASE() AND command = 'Query' AND time >= 1"
    " AND info NOT LIKE '%information_schema.processlist%'"
)


def lock_waits(engine: Engine) -> int:
    """How many statements of this test's database wait for a lock right now."""
    with engine.connect() as connection:
        return int(connection.execute(text(_LOCK_WAITS)).scalar_one())


@pytest.fixture
def connections(engine: Engine) -> Iterator[Callable[[], Connection]]:
    """Opens connections with a transaction begun; rolls back and closes them afterwards."""
    opened: list[Connection] = []

    def open_one() -> Connection:
        connection = engine.connect()
        connection.begin()
        opened.append(connection)
        return connection

    yield open_one
    for connection in opened:
        connection.close()


def test_the_server_runs_innodb_under_repeatable_read(engine: Engine) -> None:
    assert dialect_of(engine.dialect).skip_locked
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT @@tx_isolation").scalar_one() == "REPEATABLE-READ"


def test_a_marker_committed_while_an_insert_waits_is_read_in_a_transaction_that_read_before(
    store: OutboxStore, connections: Callable[[], Connection]
) -> None:
    """The check-back's insert waits for the local transaction, meets its key once it has
    committed, and must then read COMMIT, though REPEATABLE READ's snapshot predates it."""
    key = uuid.uuid4().hex
    local, check = connections(), connections()
    assert store.insert_marker(local, key, COMMIT) is COMMIT
    markers = store.tables.markers
    check.execute(select(func.count()).select_from(markers)).scalar_one()  # the snapshot
    waiting = Background(lambda: store.insert_marker(check, key, ROLLBACK))
    assert wait_for(lambda: lock_waits(store.engine) == 1, timeout=30)
    local.commit()
    assert waiting.result() is COMMIT


def test_a_marker_rolled_back_while_an_insert_waits_lets_that_insert_win(
    store: OutboxStore, connections: Callable[[], Connection]
) -> None:
    key = uuid.uuid4().hex
    local, check = connections(), connections()
    store.insert_marker(local, key, COMMIT)
    waiting = Background(lambda: store.insert_marker(check, key, ROLLBACK))
    assert wait_for(lambda: lock_waits(store.engine) == 1, timeout=30)
    local.rollback()
    assert waiting.result() is ROLLBACK
    check.commit()
    with store.engine.connect() as connection:
        assert store.insert_marker(connection, key, COMMIT) is ROLLBACK


def test_a_check_back_that_loses_a_deadlock_on_the_marker_runs_its_pass_again(
    engine: Engine, connections: Callable[[], Connection]
) -> None:
    """Two ROLLBACK inserts wait on the local transaction's marker; it rolls back; InnoDB
    kills one of the two (errno 1213) and rolls its whole transaction back. The check-back,
    the lighter one, runs its pass again and decides from the marker that stands."""
    group = f"g{uuid.uuid4().hex[:8]}"
    producer = txmq.Producer(group=group, engine=engine)
    message = producer.prepare_local(txmq.Message("orders", b"x"), immunity=timedelta(0))
    scratch = Table(f"scratch_{uuid.uuid4().hex[:8]}", MetaData(), Column("n", Integer))
    scratch.create(engine)
    try:
        local, settler = connections(), connections()
        producer.store.insert_marker(local, message.id, COMMIT)
        # Rows written make the settler's transaction the heavier one: InnoDB rolls back
        # the lighter transaction of a deadlock, here the check-back's.
        settler.execute(scratch.insert(), [{"n": n} for n in range(500)])
        settling = Background(lambda: producer.store.insert_marker(settler, message.id, ROLLBACK))
        assert wait_for(lambda: lock_waits(engine) == 1, timeout=30)
        checking = Background(producer.check_back_once)
        assert wait_for(lambda: lock_waits(engine) == 2, timeout=30)
        local.rollback()
        assert settling.result() is ROLLBACK
        settler.commit()
        assert checking.result() == 1
        assert producer.store.get(message.id).state is RecordState.ROLLED_BACK
    finally:
        # A failed step may leave a transaction open on the scratch table: DROP would wait
        # for its metadata lock forever instead of letting the failure show.
        local.close()
        settler.close()
        scratch.drop(engine)


def _stage(engine: Engine, producer: txmq.Producer, *messages: txmq.Message) -> None:
    with Session(engine) as session, session.begin():
        producer.stage(session, *messages)


def test_relays_claim_with_skip_locked_and_never_pass_an_earlier_record_of_a_key(
    engine: Engine, connections: Callable[[], Connection]
) -> None:
    group = f"g{uuid.uuid4().hex[:8]}"
    producer = txmq.Producer(group=group, engine=engine)
    keyed = [txmq.Message("orders", f"k{n}".encode(), key="k") for n in range(3)]
    free = [txmq.Message("orders", f"f{n}".encode()) for n in range(4)]
    _stage(engine, producer, keyed[0], *free[:2], keyed[1], *free[2:], keyed[2])
    first, second = connections(), connections()
    claimed_first = producer.store.claim_ready(first, 2, group=group)
    assert [c.message.id for c in claimed_first] == [keyed[0].id, free[0].id]
    # Not blocked by the first relay's locks; the key's later records wait for its first.
    claimed_second = producer.store.claim_ready(second, 10, group=group)
    assert {c.message.id for c in claimed_second} == {m.id for m in free[1:]}
    first.rollback()
    second.rollback()
    third = connections()
    assert [c.message.id for c in producer.store.claim_ready(third, 10, group=group)] == [
        m.id for m in (keyed[0], *free[:2], keyed[1], *free[2:], keyed[2])
    ]


def test_the_inbox_applies_a_redelivery_once_under_repeatable_read(
    engine: Engine, connections: Callable[[], Connection]
) -> None:
    """A redelivery claimed while the first delivery's transaction runs waits for it and is
    then a duplicate; had that transaction rolled back, the redelivery would be the one."""
    from txmq.sql.tables import make_inbox_table

    inbox = Inbox(make_inbox_table(metadata), f"g{uuid.uuid4().hex[:8]}")
    for outcome in ("commit", "rollback"):
        key = uuid.uuid4().hex
        first, redelivered = connections(), connections()
        redelivered.execute(select(func.count()).select_from(inbox.table)).scalar_one()
        assert inbox.claim(first, key, "orders")
        waiting = Background(functools.partial(inbox.claim, redelivered, key, "orders"))
        assert wait_for(lambda: lock_waits(engine) == 1, timeout=30)
        getattr(first, outcome)()
        assert waiting.result() is (outcome == "rollback")
        redelivered.commit()
        with engine.connect() as connection:
            assert not inbox.claim(connection, key, "orders")


def test_an_idle_relay_polls_and_publishes_within_its_poll_interval(
    engine: Engine, txmq_memory_url: str
) -> None:
    broker = txmq.connect(txmq_memory_url)
    group = f"g{uuid.uuid4().hex[:8]}"
    topic = f"t{uuid.uuid4().hex[:8]}"
    broker.declare([txmq.Topology(group, topic)])
    producer = txmq.Producer(group=group, engine=engine, broker=broker)
    relay = producer.relay(poll_interval=0.2)
    relay.start()
    try:
        sources = broker.sources_for([txmq.Topology(group, topic)])
        with broker.subscribe(group, sources) as subscription:
            received: list[txmq.Message] = []

            def arrived(count: int) -> bool:
                deliveries = subscription.poll(0.05)
                received.extend(d.message for d in deliveries if d.message is not None)
                subscription.ack(deliveries)
                return len(received) >= count

            # The first message gets the lane going; after it the lane has nothing to do
            # and waits (polls) for the second.
            _stage(engine, producer, txmq.Message(topic, b"first"))
            assert wait_for(lambda: arrived(1), timeout=30)
            _stage(engine, producer, txmq.Message(topic, b"wake"))
            assert wait_for(lambda: arrived(2), timeout=30)
            assert [m.body for m in received] == [b"first", b"wake"]
    finally:
        relay.stop()
        broker.close()


def test_a_handler_that_loses_a_lock_wait_runs_again_and_spends_no_attempt(
    engine: Engine, txmq_memory_url: str, connections: Callable[[], Connection]
) -> None:
    """InnoDB gives up a lock wait (errno 1205) in the handler's transaction: that is no
    failure of the message. The transaction runs again; no retry copy is published."""
    from txmq.consumer import Consumer, make_inbox_table

    suffix = uuid.uuid4().hex[:8]
    topic = f"t{suffix}"
    tables = MetaData()
    inbox = make_inbox_table(tables, name=f"inbox_{suffix}")
    counter = Table(f"counter_{suffix}", tables, Column("n", Integer, primary_key=True))
    tables.create_all(engine)
    with engine.begin() as connection:
        connection.execute(counter.insert().values(n=1))
    adapter = txmq.connect(txmq_memory_url)
    consumer = Consumer(
        broker=adapter, engine=engine, group=f"g{suffix}", inbox=inbox, poll_interval=0.1
    )
    attempts: list[int] = []

    @consumer.handler(topic)
    def bump(message: txmq.Message, session: Session) -> None:
        attempts.append(1)
        session.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
        session.execute(counter.update().values(n=counter.c.n + 1))

    blocker = connections()
    blocker.execute(counter.update().values(n=counter.c.n))  # holds the row's lock
    consumer.start()
    try:
        publisher = adapter.publisher()
        assert all(o.ok for o in publisher.publish([txmq.Message(topic, b"bump")]))
        publisher.close()
        # The first attempt timed out waiting for the blocker; now let the next one through.
        assert wait_for(lambda: len(attempts) >= 2, timeout=60)
        blocker.rollback()
        assert wait_for(lambda: consumer.stats.processed == 1, timeout=60)
        with engine.connect() as connection:
            assert connection.execute(select(counter.c.n)).scalar_one() == 2
        assert consumer.stats.retried == 0, consumer.stats
        assert consumer.stats.dead_lettered == 0, consumer.stats
    finally:
        consumer.stop()
        adapter.close()
        tables.drop_all(engine)


def test_a_relay_claim_takes_no_gap_locks_that_block_staging_or_another_lanes_mark(
    engine: Engine, store: OutboxStore
) -> None:
    """Under REPEATABLE READ a claim that reached the end of its group's READY records
    locked the gap behind them: a producer staging the group's next record waited for the
    relay's whole publish, and another lane's mark (it moves records in that index) waited
    too, which is how lanes deadlocked (1213) or timed out (1205) marking a batch SENT.
    The relay's transactions run at READ COMMITTED: no gap locks, SKIP LOCKED as before."""
    group = f"g{uuid.uuid4().hex[:8]}"
    producer = txmq.Producer(group=group, engine=engine)
    _stage(engine, producer, *(txmq.Message("orders", f"m{n}".encode(), key="k") for n in range(3)))
    with store.queue_engine.connect() as relay_lane:
        relay_lane.begin()
        assert len(store.claim_ready(relay_lane, 10, group=group)) == 3
        with engine.connect() as staging:
            # Fail fast instead of waiting for the claim's transaction to end.
            staging.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 2")
            staging.commit()
            with Session(bind=staging) as session, session.begin():
                producer.stage(session, txmq.Message("orders", b"next", key="k"))
        relay_lane.rollback()
    assert store.counts(groups=[group])[RecordState.READY.value] == 4
