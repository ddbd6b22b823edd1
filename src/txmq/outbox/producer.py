"""The transactional producer: outbox staging and RocketMQ's half-message flow.

Three ways to tie a message to a local transaction:

* :meth:`Producer.stage` — outbox mode: the record is written in *your* SQLAlchemy
  transaction; it exists (READY) exactly when that transaction commits.
* :meth:`Producer.send_in_transaction` — RocketMQ's ``sendMessageInTransaction``: a PREPARED
  half record is made durable, your executor runs the local transaction and answers COMMIT,
  ROLLBACK or UNKNOWN; UNKNOWN (or a crash) is resolved later by the group's checker.
* :meth:`Producer.send_in_local_transaction` — self-answering: txmq runs your function in a
  transaction on its own database, with a transaction marker written first; the check-back
  then decides from the marker alone, without a checker.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from txmq.adapters import Adapter, connect
from txmq.adapters.base import Transaction
from txmq.database import outside_run_sync_is_an_error
from txmq.errors import BrokerError, InvalidDelay, TransactionError, TxmqError
from txmq.lifecycle import Closing
from txmq.message import DEFAULT_MAX_BODY_BYTES, Message, validate_name
from txmq.outbox.checkback import CheckBack, CheckBackPolicy, Checker
from txmq.outbox.relay import Relay
from txmq.outbox.store import OutboxRecord, OutboxStore, utcnow
from txmq.sql.tables import OutboxTables, make_outbox_tables, metadata
from txmq.states import LocalTransactionState, RecordState
from txmq.supervision import Health, SupervisedLoop, health_of
from txmq.telemetry import STAGED
from txmq.tracing import creating, publishing
from txmq.wire import HEADER_PRODUCER_GROUP

log = logging.getLogger("txmq.producer")

A = TypeVar("A")
A_contra = TypeVar("A_contra", contravariant=True)


class Executor(Protocol[A_contra]):
    """Runs the local transaction of a half message and says how it ended."""

    def __call__(self, message: Message, arg: A_contra, /) -> LocalTransactionState: ...


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a transactional send ended as.

    Attributes:
        message_id: the message's id (also the outbox record's id).
        local_state: what the local transaction answered: COMMIT, ROLLBACK, or UNKNOWN (it
            said so, or raised); always COMMIT from :meth:`Producer.send_in_local_transaction`.
        record_state: the record's state when the call returned. READY: committed, the
            relay will publish it; SENT: committed and already published (Kafka native half
            messages, whose Kafka transaction committed); ROLLED_BACK: discarded; PREPARED:
            UNKNOWN, check-back will decide. It differs from ``local_state`` only if an
            operator decided the record while the executor ran (their decision stands; no
            check-back decides a record whose executor runs).
    """

    message_id: str
    local_state: LocalTransactionState
    record_state: RecordState


#: Longer delays are refused as mistakes (about a hundred years, in seconds).
_LONGEST_DELAY = 100 * 365 * 86400.0


def due_time(deliver_at: datetime | None, delay: timedelta | float | None) -> datetime | None:
    """When a message given ``deliver_at`` or ``delay`` (seconds, or a timedelta, from now)
    is due, in UTC; None if neither is given.

    Raises:
        InvalidDelay: both are given, ``deliver_at`` is naive (no time zone) or not a
            datetime, or ``delay`` is negative or neither a number nor a timedelta.
    """
    if deliver_at is not None and delay is not None:
        raise InvalidDelay("give deliver_at or delay, not both")
    if deliver_at is not None:
        if not isinstance(deliver_at, datetime):
            raise InvalidDelay(f"deliver_at must be a datetime, not {type(deliver_at).__name__}")
        if deliver_at.tzinfo is None or deliver_at.utcoffset() is None:
            raise InvalidDelay(
                f"deliver_at must be timezone-aware (e.g. datetime.now(UTC) + ...), not the "
                f"naive {deliver_at.isoformat()}"
            )
        return deliver_at.astimezone(UTC)
    if delay is None:
        return None
    if isinstance(delay, bool) or not isinstance(delay, (timedelta, int, float)):
        raise InvalidDelay(f"delay must be a timedelta or seconds, not {type(delay).__name__}")
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    if not 0 <= seconds < _LONGEST_DELAY:  # also refuses NaN and infinity
        raise InvalidDelay(f"delay must be from 0 to {_LONGEST_DELAY:.0f} seconds, not {delay!r}")
    return utcnow() + timedelta(seconds=seconds)


class Producer(Closing):
    """Transactional producer of one producer group.

    Args:
        group: the producer group; every instance of the group answers its check-backs.
        engine: the database holding the outbox (PostgreSQL recommended; SQLite: one relay).
        broker: adapter or URL; needed to relay (and for Kafka native half messages).
        checker: answers check-backs of :meth:`send_in_transaction` records.
        check_policy: immunity, interval, limit and what happens at the limit.
        tables: the outbox tables on your ``MetaData`` (default: on :data:`txmq.metadata`).
        kafka_native: where the broker has native transactions (Kafka; see
            :class:`~txmq.adapters.base.Capabilities`), produce half messages inside an
            open broker transaction while the executor runs; otherwise, or with False,
            they go through the relay. True here only where the broker can.
        instance_id: stable name of this instance; with native transactions the
            transactions of half messages are named by it (Kafka:
            ``transactional.id = txmq-<group>-<instance_id>-<n>``), so that a restarted
            instance fences the transactions its predecessor left open.
        max_body_bytes: largest message (body + headers) :meth:`stage` accepts; default
            the broker URL's ``max_body_bytes``. Lowered to the broker's own limit where
            the adapter can learn it (Kafka's ``message.max.bytes``, asked once here,
            within the connect timeout, and again at :meth:`start` if Kafka did not answer).

    Example:
        >>> producer = txmq.Producer(group="orders", engine=engine, broker="kafka://...")
        >>> with Session(engine) as session, session.begin():
        ...     session.add(Order(...))
        ...     producer.stage(session, txmq.Message("orders.created", b"{...}"))
    """

    def __init__(
        self,
        *,
        group: str,
        engine: Engine,
        broker: Adapter | str | None = None,
        checker: Checker | None = None,
        check_policy: CheckBackPolicy | None = None,
        tables: OutboxTables | None = None,
        kafka_native: bool = True,
        instance_id: str | None = None,
        max_body_bytes: int | None = None,
    ) -> None:
        self.group = validate_name(group, "producer group")
        self.engine = engine
        self.tables = tables or make_outbox_tables(metadata)
        self.store = OutboxStore(engine, self.tables)
        self.broker = connect(broker) if isinstance(broker, str) else broker
        self._owns_broker = isinstance(broker, str)
        self.check_policy = check_policy or CheckBackPolicy()
        self.checkback = CheckBack(self.store, self.group, checker, self.check_policy)
        self.kafka_native = (
            kafka_native
            and self.broker is not None
            and self.broker.capabilities.native_transactions
        )
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        if max_body_bytes is not None:
            self.max_body_bytes = max_body_bytes
        elif self.broker is not None:
            self.max_body_bytes = self.broker.max_body_bytes
        else:
            self.max_body_bytes = DEFAULT_MAX_BODY_BYTES
        self._stage_limit = self.max_body_bytes
        self._learn_limit()
        self._transactions: queue.SimpleQueue[Transaction] = queue.SimpleQueue()
        self._transaction_count = 0
        self._transaction_lock = threading.Lock()
        self._relay: Relay | None = None
        self._workers: list[SupervisedLoop] = []
        self._stop = threading.Event()

    # -- outbox mode -----------------------------------------------------------------------

    def stage(
        self,
        session: Session,
        *messages: Message,
        deliver_at: datetime | None = None,
        delay: timedelta | float | None = None,
    ) -> None:
        """Write ``messages`` to the outbox inside the session's current transaction.

        They exist (READY) if and only if that transaction commits, and are then published
        by a relay.

        With ``deliver_at`` (an aware datetime) or ``delay`` (a timedelta, or seconds) they
        wait in the outbox as DELAYED until then, and a relay publishes them within its
        ``poll_interval`` of that time; until then :meth:`cancel` can withdraw them. A time
        already past publishes them at once.

        With SQLAlchemy's asyncio, call it through ``AsyncSession.run_sync``:
        ``await session.run_sync(lambda s: producer.stage(s, message))`` (any driver).

        Raises:
            WrongDatabase: the session is bound to another database than the outbox's.
            ConfigurationError: not a synchronous ``Session`` (an ``AsyncSession`` passed
                directly), or an asyncio-bound session used outside ``run_sync``.
            InvalidMessage / MessageTooLarge: a message cannot be sent as given.
            InvalidDelay: both ``deliver_at`` and ``delay``, a naive datetime, a negative
                delay, or another type.
        """
        due = due_time(deliver_at, delay)
        if due is not None and due <= utcnow():
            due = None
        with creating("stage", group=self.group, system=self._system) as traced:
            checked = self._checked(messages, traced)
            with outside_run_sync_is_an_error("stage()"):
                connection = self.store.check_session(session)
                self.store.stage(connection, checked, self.group, deliver_at=due)
        STAGED.labels(self.group, "outbox").inc(len(checked))

    def cancel(self, session: Session, message_id: str) -> bool:
        """Withdraw this group's delayed message ``message_id`` before it is due, inside the
        session's current transaction: if that transaction commits, the record is CANCELLED
        and never published; if it rolls back, nothing changed.

        Returns:
            True if a DELAYED record was cancelled; False if there is none: unknown id,
            another group's, not delayed, already due (handed to the relays; it may be
            published already), or already cancelled.

        Raises:
            WrongDatabase / ConfigurationError: as :meth:`stage`.
        """
        with outside_run_sync_is_an_error("cancel()"):
            connection = self.store.check_session(session)
            return self.store.cancel(connection, message_id, self.group)

    # -- half-message mode -------------------------------------------------------------

    def send_in_transaction(
        self,
        message: Message,
        executor: Executor[A],
        arg: A,
        *,
        immunity: timedelta | None = None,
        deliver_at: datetime | None = None,
        delay: timedelta | float | None = None,
    ) -> SendResult:
        """RocketMQ's ``sendMessageInTransaction``.

        The PREPARED half record is durable before ``executor(message, arg)`` runs.
        COMMIT makes the message deliverable, ROLLBACK discards it, UNKNOWN (or an exception,
        or a crash) leaves it PREPARED for the check-back, no earlier than ``immunity``
        (default: the check policy's) from now.

        With ``deliver_at`` or ``delay`` (as :meth:`stage`; the delay counts from this
        call), COMMIT (the executor's, a check-back's or an operator's) makes it DELAYED
        until then, READY if that time has passed; it then always goes through the relay,
        never a native broker transaction.

        While the executor runs, no check-back decides the record: it is row-locked (or, on
        SQLite, leased; see :attr:`CheckBackPolicy.executor_lease`).

        Raises:
            InvalidMessage / MessageTooLarge: before anything is written.
            TransactionError: a check-back or an operator decided the half record before the
                executor could start; the executor did not run.
            TxmqError: the half record could not be written (the executor did not run).
            InvalidDelay: as :meth:`stage`, before anything is written.
        """
        due = due_time(deliver_at, delay)
        immunity = self.check_policy.immunity if immunity is None else immunity
        first_check = utcnow() + immunity
        with creating("send_in_transaction", group=self.group, system=self._system) as traced:
            (message,) = self._checked((message,), traced)
            self.store.prepare(message, self.group, immunity=immunity, deliver_at=due)
        STAGED.labels(self.group, "half").inc()
        native = self.kafka_native and due is None
        transaction = self._acquire_transaction() if native else None
        if transaction is not None:
            return self._send_native(transaction, message, executor, arg, first_check)
        with self.engine.begin() as connection:
            self._hold(connection, message.id)
            state = self._execute_held(message, executor, arg, first_check)
            if state is LocalTransactionState.UNKNOWN:
                return SendResult(message.id, state, RecordState.PREPARED)
            to = (
                RecordState.READY
                if state is LocalTransactionState.COMMIT
                else RecordState.ROLLED_BACK
            )
            to = self.store.settle(connection, message.id, to, delayed=due is not None)
        return SendResult(message.id, state, to)

    def _send_native(
        self,
        transaction: Transaction,
        message: Message,
        executor: Executor[A],
        arg: A,
        first_check: datetime,
    ) -> SendResult:
        """The half message produced in a broker transaction while the executor runs."""
        assert self.broker is not None  # the transaction came from it
        system = self.broker.system
        reusable = True
        try:
            with self.engine.begin() as connection:
                self._hold(connection, message.id)
                try:
                    transaction.begin()
                    with publishing([message], system=system):
                        transaction.produce([message])
                    opened = True
                except BrokerError:
                    # The executor still runs; on COMMIT the relay delivers the message.
                    log.warning("no broker transaction for %s; relaying", message.id, exc_info=True)
                    opened = reusable = False
                state = self._execute_held(message, executor, arg, first_check)
                if state is not LocalTransactionState.COMMIT:
                    if opened:
                        self._abort(transaction)
                    if state is LocalTransactionState.UNKNOWN:
                        return SendResult(message.id, state, RecordState.PREPARED)
                    to = RecordState.ROLLED_BACK
                elif not opened:
                    to = RecordState.READY
                else:
                    # Marked SENT before the Kafka commit: if an operator decided the record
                    # while the executor ran, their decision stands and the Kafka
                    # transaction is aborted.
                    to = self.store.settle(connection, message.id, RecordState.SENT)
                    if to is not RecordState.SENT:
                        self._abort(transaction)
                        return SendResult(message.id, state, to)
                    try:
                        transaction.commit()
                        return SendResult(message.id, state, to)
                    except BrokerError:
                        # Kafka "just threw": whether it committed is unknown. The local
                        # transaction did commit, so the relay publishes it (again, same id).
                        log.warning(
                            "broker transaction commit of %s failed; relaying",
                            message.id,
                            exc_info=True,
                        )
                        reusable = False
                        self.store.transition(
                            connection, message.id, RecordState.READY, expected=(to,)
                        )
                        return SendResult(message.id, state, RecordState.READY)
                to = self.store.settle(connection, message.id, to)
                return SendResult(message.id, state, to)
        finally:
            if reusable:
                self._transactions.put(transaction)
            else:
                transaction.close()

    def send_in_local_transaction(
        self,
        message: Message,
        work: Callable[[Session], Any],
        *,
        immunity: timedelta | None = None,
        deliver_at: datetime | None = None,
        delay: timedelta | float | None = None,
    ) -> SendResult:
        """Run ``work(session)`` as the local transaction, on the outbox's database.

        With ``deliver_at`` or ``delay`` (as :meth:`send_in_transaction`), the committed
        message is DELAYED until then.

        A transaction marker is the first statement of that transaction, so a check-back
        can always tell whether it committed: no checker is needed, and the outcome is never
        UNKNOWN once the transaction has ended. If ``work`` raises, the transaction is
        rolled back, the message is discarded and the exception propagates.

        Raises:
            TransactionError: a check-back had already rolled the message back before the
                local transaction could start (it then did nothing).
            InvalidDelay: as :meth:`stage`, before anything is written.
        """
        due = due_time(deliver_at, delay)
        message = self.prepare_local(message, immunity=immunity, deliver_at=due)
        try:
            with Session(self.engine) as session, session.begin():
                standing = self.store.insert_marker(
                    session.connection(), message.id, LocalTransactionState.COMMIT
                )
                if standing is not LocalTransactionState.COMMIT:
                    raise TransactionError(
                        f"message {message.id} was rolled back by a check-back before its "
                        "local transaction started"
                    )
                work(session)
        except BaseException:
            # Whatever happened (work raised, commit failed or was interrupted), the marker
            # now says how the transaction ended.
            self.settle_by_marker(message)
            raise
        to = self.settle_committed(message.id, delayed=due is not None)
        return SendResult(message.id, LocalTransactionState.COMMIT, to)

    # -- the steps of a local transaction, for a caller that runs the transaction itself --

    def prepare_local(
        self,
        message: Message,
        *,
        immunity: timedelta | None = None,
        deliver_at: datetime | None = None,
    ) -> Message:
        """Write ``message``'s PREPARED half record whose transaction marker key is its id:
        the first step of :meth:`send_in_local_transaction`, for a caller (such as
        :class:`txmq.aio.AsyncProducer`) that runs the local transaction on its own
        connection. That transaction's first statement must then be
        ``store.insert_marker(connection, message.id, COMMIT)``; afterwards call
        :meth:`settle_committed`, or :meth:`settle_by_marker` if it did not commit.
        ``deliver_at`` (aware, see :func:`due_time`): its COMMIT makes it DELAYED until then.

        Returns:
            the message as written (trace context and producer group header added).

        Raises:
            TypeError: ``message`` is not a :class:`Message`.
            InvalidMessage / MessageTooLarge: before anything is written.
        """
        with creating("send_in_local_transaction", group=self.group, system=self._system) as traced:
            (message,) = self._checked((message,), traced)
            self.store.prepare(
                message,
                self.group,
                immunity=self.check_policy.immunity if immunity is None else immunity,
                tx_key=message.id,
                deliver_at=deliver_at,
            )
        STAGED.labels(self.group, "local").inc()
        return message

    def settle_committed(self, message_id: str, *, delayed: bool = False) -> RecordState:
        """Move the record of a committed local transaction (see :meth:`prepare_local`) to
        READY for the relay (DELAYED if it has a ``deliver_at`` still to come: say so with
        ``delayed``); return the state it has now."""
        with self.engine.begin() as connection:
            # A check-back that ran after the commit may have moved it to READY already.
            return self.store.settle(connection, message_id, RecordState.READY, delayed=delayed)

    def settle_by_marker(self, message: Message) -> None:
        """Settle the record of a local transaction (see :meth:`prepare_local`) that ended
        without a known commit, as its marker says: READY if the transaction committed,
        else ROLLED_BACK (a ROLLBACK marker makes a late commit impossible). On a database
        error it logs a warning and leaves the record to the check-back; it does not raise.
        """
        try:
            with self.engine.begin() as connection:
                outcome = self.store.insert_marker(
                    connection, message.id, LocalTransactionState.ROLLBACK
                )
                to = (
                    RecordState.READY
                    if outcome is LocalTransactionState.COMMIT
                    else RecordState.ROLLED_BACK
                )
                self.store.settle(connection, message.id, to)
        except Exception:
            log.warning("could not settle %s now; check-back will", message.id, exc_info=True)

    # -- check-back, relay, operators ------------------------------------------------------

    def check_back_once(self, limit: int = 50) -> int:
        """Answer the due check-backs of this group once; return how many were looked at.

        Raises:
            WorkerBusy: on SQLite, another check-back worker of the group is working.
        """
        return self.checkback.run_once(limit)

    def relay(self, **options: Any) -> Relay:
        """A :class:`Relay` of this producer's group (unless ``options`` name other groups),
        outbox and broker (``options``: see Relay)."""
        if self.broker is None:
            raise TxmqError("this producer has no broker: pass broker=... to relay")
        options.setdefault("instance_id", self.instance_id)
        if not options.get("all_groups"):
            options.setdefault("groups", (self.group,))
        return Relay(self.broker, self.store, **options)

    def start(
        self, *, relay: bool = True, check_back_every: float = 1.0, **relay_options: Any
    ) -> Producer:
        """Start the relay of this group and the check-back loop in daemon threads (stop with
        :meth:`close`).

        Both survive database and broker outages and resume by themselves; :meth:`health`
        tells whether one has died. On SQLite, where one relay and one check-back worker of a
        group work at a time, they stand by while those of another instance work, and take
        over when that instance stops or its process dies.
        """
        self._learn_limit()
        if relay and self._relay is None:
            self._relay = self.relay(**relay_options).start()
        if not self._workers:
            self._stop.clear()

            worker = SupervisedLoop(
                name="txmq-checkback",
                step=self.checkback.loop_step,
                stop=self._stop,
                idle=lambda: self._stop.wait(check_back_every),
                on_exit=self.checkback.lock.release,
            )
            self._workers.append(worker.start())
        return self

    def health(self) -> Health:
        """How the loops started by :meth:`start` are doing: the check-back loop and the
        relay's lanes (see :mod:`txmq.supervision`)."""
        relayed = self._relay.health() if self._relay is not None else Health()
        return health_of(self._workers) + relayed

    def healthy(self) -> bool:
        """False once a background loop has died (a fatal error or an unexpected exception)."""
        return self.health().healthy

    def parked(self, limit: int = 100) -> list[OutboxRecord]:
        """PARKED records of this group, oldest first."""
        return self.store.list(RecordState.PARKED, groups=(self.group,), limit=limit)

    def resume(self, message_id: str) -> None:
        """Give a PARKED record of this group a new round of check-backs (check count reset).

        Raises:
            RecordNotFound: no PARKED record of this group has that id.
        """
        self.store.resolve(message_id, RecordState.PREPARED, reset_checks=True, group=self.group)

    def commit(self, message_id: str) -> None:
        """Operator decision: a PARKED (or PREPARED) record of this group committed; it will
        be published. Raises :class:`RecordNotFound` as :meth:`resume` does."""
        self.store.resolve(
            message_id,
            RecordState.READY,
            expected=(RecordState.PARKED, RecordState.PREPARED),
            group=self.group,
        )

    def rollback(self, message_id: str) -> None:
        """Operator decision: a PARKED (or PREPARED) record of this group rolled back; it is
        discarded. Raises :class:`RecordNotFound` as :meth:`resume` does."""
        self.store.resolve(
            message_id,
            RecordState.ROLLED_BACK,
            expected=(RecordState.PARKED, RecordState.PREPARED),
            group=self.group,
        )

    def failed(self, limit: int = 100) -> list[OutboxRecord]:
        """FAILED records of this group (the broker refused them for good), oldest first;
        ``last_error`` says why."""
        return self.store.list(RecordState.FAILED, groups=(self.group,), limit=limit)

    def retry(self, message_id: str) -> None:
        """Operator decision: publish a FAILED record again (READY, publish attempts reset).

        Raises:
            RecordNotFound: no record with that id is FAILED.
        """
        self.store.retry_failed(message_id)

    def discard(self, message_id: str) -> None:
        """Operator decision: delete a FAILED record; it is never published.

        Raises:
            RecordNotFound: no record with that id is FAILED.
        """
        self.store.discard_failed(message_id)

    def close(self) -> None:
        """Stop the background threads, release Kafka transactions, and close the broker
        connection if this producer opened it from a URL. Idempotent."""
        self._stop.set()
        for worker in self._workers:
            worker.join(10)
        self._workers.clear()
        if self._relay is not None:
            self._relay.stop()
            self._relay = None
        while not self._transactions.empty():
            self._transactions.get_nowait().close()
        if self._owns_broker and self.broker is not None:
            self.broker.close()
            self._owns_broker = False

    # -- helpers ---------------------------------------------------------------------------

    def _learn_limit(self) -> None:
        """Lower the staging limit to the broker's (a network round trip, once)."""
        if self.broker is not None:
            self._stage_limit = min(self.max_body_bytes, self.broker.publish_limit())

    @property
    def _system(self) -> str | None:
        return None if self.broker is None else self.broker.system

    def _checked(
        self, messages: Sequence[Message], traced: Callable[[Message], Message]
    ) -> list[Message]:
        """``messages`` given their trace context (``traced``) and group header, checked.

        Raises:
            TypeError: one is not a :class:`Message`.
            InvalidMessage / MessageTooLarge: one cannot be sent as given.
        """
        checked = []
        for given in messages:
            if not isinstance(given, Message):
                raise TypeError(f"expected txmq.Message, not {type(given).__name__}")
            message = traced(given)
            if message.headers.get(HEADER_PRODUCER_GROUP) != self.group:
                message = message.with_headers(**{HEADER_PRODUCER_GROUP: self.group})
            message.check_size(self._stage_limit)
            checked.append(message)
        return checked

    def _hold(self, connection: Connection, message_id: str) -> None:
        """Keep check-backs away from a PREPARED record whose executor is about to run.

        With row locks (PostgreSQL, MySQL) the lock taken in ``connection`` does, until that
        transaction ends (or its connection dies with the producer). On SQLite the record is
        leased (its next check moved past the lease) and :meth:`_execute_held` renews it.

        Raises:
            TransactionError: a check-back or an operator decided the record already.
        """
        if self.store.skip_locked:
            held = self.store.lock_prepared(connection, message_id)
        else:
            held = self.store.lease_prepared(
                message_id, utcnow() + self.check_policy.executor_lease
            )
        if not held:
            state = self.store.get(message_id).state
            raise TransactionError(
                f"message {message_id} was decided ({state.value}) by a check-back or an "
                "operator before its local transaction started; the executor did not run"
            )

    def _execute_held(
        self, message: Message, executor: Executor[A], arg: A, first_check: datetime
    ) -> LocalTransactionState:
        """Run the executor of a record :meth:`_hold` holds, renewing a SQLite lease while it
        runs; after UNKNOWN, check-back may come as first scheduled (``first_check``)."""
        if self.store.skip_locked:
            return self._execute(message, executor, arg)
        with self._renewing_lease(message.id):
            state = self._execute(message, executor, arg)
        if state is LocalTransactionState.UNKNOWN:
            try:
                self.store.lease_prepared(message.id, first_check)
            except Exception:  # the answer stands; check-back comes when the lease runs out
                log.warning("could not end the lease of %s", message.id, exc_info=True)
        return state

    @contextmanager
    def _renewing_lease(self, message_id: str) -> Iterator[None]:
        lease = self.check_policy.executor_lease
        done = threading.Event()

        def renew() -> None:
            while not done.wait(lease.total_seconds() / 3):
                try:
                    if not self.store.lease_prepared(message_id, utcnow() + lease):
                        return  # decided meanwhile (an operator): nothing left to keep away
                except Exception:  # the lease still runs; the next renewal may succeed
                    log.warning("could not renew the lease of %s", message_id, exc_info=True)

        renewer = threading.Thread(target=renew, name="txmq-lease", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()

    def _execute(self, message: Message, executor: Executor[A], arg: A) -> LocalTransactionState:
        try:
            return LocalTransactionState(executor(message, arg))
        except Exception:
            log.exception("local transaction of %s raised: UNKNOWN", message.id)
            return LocalTransactionState.UNKNOWN

    def _acquire_transaction(self) -> Transaction | None:
        """A free broker transaction of this producer, or a new one (``None`` where the
        broker offers none)."""
        try:
            return self._transactions.get_nowait()
        except queue.Empty:
            pass
        assert self.broker is not None
        with self._transaction_lock:
            self._transaction_count += 1
            number = self._transaction_count
        return self.broker.transaction(f"{self.group}-{self.instance_id}-{number}")

    def _abort(self, transaction: Transaction) -> None:
        try:
            transaction.abort()
        except BrokerError:
            # An unaborted transaction is aborted by the broker at its timeout; nothing reads it.
            log.warning("broker transaction abort failed", exc_info=True)
