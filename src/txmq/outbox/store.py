"""SQL of the producer side: stage, prepare, claim, mark, check-back bookkeeping, purge.

All statements are SQLAlchemy Core on the tables of :mod:`txmq.sql.tables`, so the same
code runs on PostgreSQL (first-class: ``FOR UPDATE SKIP LOCKED``, LISTEN/NOTIFY), MySQL 8 /
MariaDB 10.6+ (``SKIP LOCKED``) and SQLite (one relay and one check-back worker at a time);
where they differ, :mod:`txmq.sql.dialect` decides.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from txmq.database import require_sync_engine, same_database, session_connection
from txmq.database_errors import refusal
from txmq.errors import RecordNotFound, SchemaMissing, WrongDatabase
from txmq.message import Message, restore_message
from txmq.sql.dialect import DirectStatement, UniqueInsert, dialect_of
from txmq.sql.schema import (
    UPGRADE_HINT,
    is_missing_column,
    raises_schema_missing,
    upgrade_statements,
)
from txmq.sql.tables import OutboxTables, in_state
from txmq.states import LocalTransactionState, RecordState

log = logging.getLogger("txmq.outbox")

#: How long transaction markers are kept at least, whatever the records' retention: a
#: ROLLBACK marker is what makes a local transaction that starts after its check-back fail
#: on its key instead of committing.
MARKER_RETENTION = timedelta(days=1)


#: The columns :meth:`OutboxStore.stage` writes; the rest keep their defaults.
_STAGED_COLUMNS = (
    "id",
    "producer_group",
    "topic",
    "key",
    "headers",
    "body",
    "state",
    "created_at",
    "updated_at",
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for timezone-aware columns: they are UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One outbox / half-message record as read from the database."""

    seq: int
    message: Message
    producer_group: str
    state: RecordState
    check_count: int
    publish_attempts: int
    check_after: datetime | None
    deliver_at: datetime | None
    created_at: datetime
    updated_at: datetime
    tx_key: str | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class ClaimedRecord:
    """A READY record a relay holds the lock of: what it needs to publish and mark it."""

    seq: int
    message: Message
    publish_attempts: int


@raises_schema_missing
class OutboxStore:
    """The producer's SQL, bound to one engine and one set of tables.

    Every method raises :class:`~txmq.errors.SchemaMissing` where a table is missing.
    """

    def __init__(self, engine: Engine, tables: OutboxTables) -> None:
        self.engine = require_sync_engine(engine, "txmq's outbox")
        self.tables = tables
        self.sql = dialect_of(engine.dialect)
        # The relay, the producer and the SQLite worker lock read these two.
        self.dialect = self.sql.name
        self.skip_locked = self.sql.skip_locked
        #: The engine of the relay's own transactions (claim and mark, release of due
        #: delayed records, purge): on MySQL/MariaDB at READ COMMITTED, without gap locks.
        self.queue_engine = self.sql.queue_engine(self.engine)
        records = tables.records
        # One producer group per claim, through the READY index on (group, seq): it reads
        # only its batch, however large another group's backlog.
        ready: Select[Any] = select(
            records.c.seq,
            records.c.id,
            records.c.topic,
            records.c.key,
            records.c.headers,
            records.c.body,
            records.c.publish_attempts,
        ).where(
            in_state(records, RecordState.READY),
            or_(records.c.check_after.is_(None), records.c.check_after <= bindparam("now")),
        )
        claim = self.sql.after_in_group(
            ready,
            records.c.producer_group,
            records.c.seq,
            # Typed, so that the driver sends one type whatever the value (psycopg keys its
            # prepared statements by the parameters' types as well as the text).
            group_value=bindparam("group", type_=records.c.producer_group.type),
            after=bindparam("after", type_=records.c.seq.type),
        ).limit(bindparam("limit"))
        # The relay's statements run thousands of rows a second, and staging once per
        # business transaction: all four take the direct-cursor path.
        self._claim = DirectStatement(self.sql.claim_lock(claim))
        seqs = self.sql.in_values(records.c.seq, "seqs")
        self._mark_sent = DirectStatement(
            update(records)
            .where(seqs)
            .values(state=bindparam("sent"), updated_at=bindparam("now"), last_error=null())
        )
        self._delete_sent = DirectStatement(delete(records).where(seqs))
        # Only the columns a READY record needs (the others have server defaults or are NULL).
        self._stage = DirectStatement(insert(records), column_keys=_STAGED_COLUMNS)
        self._stage_delayed = DirectStatement(
            insert(records), column_keys=(*_STAGED_COLUMNS, "deliver_at")
        )
        self._insert_marker = UniqueInsert(
            tables.markers,
            key=tables.markers.c.tx_key,
            columns=("tx_key", "outcome", "created_at"),
        )

    def check_schema(self) -> None:
        """Raise :class:`~txmq.errors.SchemaMissing` unless both tables exist with every
        column (one query of no rows from each; a missing column is named with the DDL that
        adds it), or :class:`~txmq.errors.DatabaseRefused` if the database refuses
        the connection (wrong password, no such role or database)."""
        try:
            with self.engine.connect() as connection:
                for table in (self.tables.records, self.tables.markers):
                    connection.execute(select(table).limit(0)).close()
        except DBAPIError as exc:
            if is_missing_column(exc):
                raise self._lacking(exc) from exc
            refused = refusal(exc)
            if refused is None:
                raise
            raise refused from exc

    def _lacking(self, exc: DBAPIError) -> SchemaMissing:
        """What tables made by an older txmq lack, with the DDL that adds it."""
        try:
            statements = upgrade_statements(self.engine, self.tables)
        except Exception:  # the hint still says how; the database's error is the cause
            log.debug("could not list the missing columns", exc_info=True)
            statements = []
        ddl = "; ".join(statements) or str(exc.orig).strip().splitlines()[0]
        return SchemaMissing(
            f"txmq's outbox tables lack what this version needs ({ddl}): {UPGRADE_HINT}"
        )

    # -- writing ---------------------------------------------------------------------------

    def _values(
        self, message: Message, group: str, state: RecordState, **more: Any
    ) -> dict[str, Any]:
        """The columns of a new record: :data:`_STAGED_COLUMNS`, then ``more``."""
        now = utcnow()
        return {
            "id": message.id,
            "producer_group": group,
            "topic": message.topic,
            "key": message.key,
            "headers": json.dumps(dict(message.headers), separators=(",", ":")),
            "body": message.body,
            "state": state.value,
            "created_at": now,
            "updated_at": now,
            **more,
        }

    def check_session(self, session: Session) -> Connection:
        """Return the session's connection to the txmq database.

        The session may use another driver than txmq's engine (an ``AsyncSession`` on
        ``postgresql+asyncpg``, through ``run_sync``), not another database.

        Raises:
            WrongDatabase: the session is bound to another database than the outbox's.
            ConfigurationError: ``session`` is not a synchronous ``Session``.
        """
        connection = session_connection(session, "stage()")
        if not same_database(connection.engine.url, self.engine.url):
            raise WrongDatabase(
                "the session is bound to "
                f"{connection.engine.url.render_as_string(hide_password=True)}, but txmq's outbox "
                f"lives in {self.engine.url.render_as_string(hide_password=True)}"
            )
        return connection

    def stage(
        self,
        connection: Connection,
        messages: Sequence[Message],
        group: str,
        *,
        deliver_at: datetime | None = None,
    ) -> None:
        """Insert READY records through ``connection`` inside the caller's transaction, or
        DELAYED ones due at ``deliver_at`` (an aware datetime)."""
        if not messages:
            return  # an empty parameter list would run one INSERT of default values
        if deliver_at is None:
            rows = [self._values(m, group, RecordState.READY) for m in messages]
            self._stage.run(connection, rows[0] if len(rows) == 1 else rows)
            return
        rows = [
            self._values(m, group, RecordState.DELAYED, deliver_at=deliver_at) for m in messages
        ]
        self._stage_delayed.run(connection, rows[0] if len(rows) == 1 else rows)

    def prepare(
        self,
        message: Message,
        group: str,
        *,
        immunity: timedelta,
        tx_key: str | None = None,
        deliver_at: datetime | None = None,
    ) -> None:
        """Insert a PREPARED half record and commit it (durable before the local transaction);
        with ``deliver_at``, its COMMIT makes it DELAYED until then."""
        with self.engine.begin() as connection:
            connection.execute(
                insert(self.tables.records),
                self._values(
                    message,
                    group,
                    RecordState.PREPARED,
                    tx_key=tx_key,
                    check_after=utcnow() + immunity,
                    deliver_at=deliver_at,
                ),
            )

    def lock_prepared(self, connection: Connection, message_id: str) -> bool:
        """Row-lock a PREPARED record so check-backs skip it; False if it is no longer PREPARED."""
        records = self.tables.records
        query = select(records.c.seq).where(
            records.c.id == message_id, in_state(records, RecordState.PREPARED)
        )
        return connection.execute(self.sql.row_lock(query)).first() is not None

    def transition(
        self,
        connection: Connection,
        message_id: str,
        to: RecordState,
        *,
        expected: Iterable[RecordState] = (RecordState.PREPARED,),
        error: str | None = None,
        due: datetime | None = None,
    ) -> bool:
        """Move one record to ``to`` if it is in one of ``expected`` (and, with ``due``, if
        its next check is due by then); return whether it moved.

        ``to`` READY means DELAYED for a record whose ``deliver_at`` is still to come.
        """
        records = self.tables.records
        now = utcnow()
        values: dict[str, Any] = {"state": self._ready_or_delayed(to, now), "updated_at": now}
        if to is RecordState.READY:
            values["check_after"] = None
        if error is not None:
            values["last_error"] = error
        result = connection.execute(
            update(records)
            .where(
                records.c.id == message_id,
                in_state(records, *expected),
                *self._still_due(due),
            )
            .values(values)
        )
        return bool(result.rowcount == 1)

    def _ready_or_delayed(self, to: RecordState, now: datetime) -> Any:
        """The new state of a record moved to ``to``: for READY, DELAYED while its
        ``deliver_at`` is still to come (NULL compares as not, so READY)."""
        if to is not RecordState.READY:
            return to.value
        return case(
            (self.tables.records.c.deliver_at > now, RecordState.DELAYED.value),
            else_=RecordState.READY.value,
        )

    def settle(
        self, connection: Connection, message_id: str, to: RecordState, *, delayed: bool = False
    ) -> RecordState:
        """Move a PREPARED record to ``to``; return the state it ends in.

        That is ``to``, unless a check-back or an operator decided the record first: their
        decision stands and is returned. ``delayed``: the record has a ``deliver_at``, so
        READY may have been DELAYED (read back).
        """
        if self.transition(connection, message_id, to) and not (
            delayed and to is RecordState.READY
        ):
            return to
        records = self.tables.records
        current = connection.execute(
            select(records.c.state).where(records.c.id == message_id)
        ).scalar_one()
        return RecordState(current)

    # -- transaction markers (self-answering check-back) --------------------------------

    def insert_marker(
        self, connection: Connection, tx_key: str, outcome: LocalTransactionState
    ) -> LocalTransactionState:
        """Insert ``(tx_key, outcome)`` unless the key exists; return the outcome that stands.

        On PostgreSQL and MySQL an insert that meets a key written by a still-running
        transaction waits for that transaction to end, which is what makes the check-back
        decide correctly while the local transaction is still running.
        """
        values = {"tx_key": tx_key, "outcome": outcome.value, "created_at": utcnow()}
        inserted = self._insert_marker.one(connection, values)
        if inserted:
            return outcome
        markers = self.tables.markers
        stored = connection.execute(
            self.sql.committed_read(select(markers.c.outcome).where(markers.c.tx_key == tx_key))
        ).scalar_one()
        return LocalTransactionState(stored)

    # -- delayed messages ----------------------------------------------------------------

    def cancel(self, connection: Connection, message_id: str, group: str) -> bool:
        """Move ``group``'s DELAYED record ``message_id`` to CANCELLED through ``connection``
        (the caller's transaction); False if there is none (unknown, of another group, not
        delayed, already due and handed to the relays, or cancelled)."""
        records = self.tables.records
        moved = connection.execute(
            update(records)
            .where(
                records.c.id == message_id,
                records.c.producer_group == group,
                in_state(records, RecordState.DELAYED),
            )
            .values(state=RecordState.CANCELLED.value, updated_at=utcnow())
        ).rowcount
        return bool(moved == 1)

    def release_due(
        self, group: str, *, now: datetime, limit: int = 10_000
    ) -> tuple[int, datetime | None]:
        """Move up to ``limit`` of ``group``'s DELAYED records due by ``now`` to READY, in a
        transaction of its own; return how many moved, and when the earliest record still
        DELAYED and not due by ``now`` is due (None: none is; a due record skipped because a
        transaction holds it is left to a later look).

        Both statements read only the DELAYED index. A record keeps its sequence number, so
        among its key's READY records it takes its place in staging order.
        """
        records = self.tables.records
        delayed = [
            in_state(records, RecordState.DELAYED),
            records.c.producer_group == group,
        ]
        with self.queue_engine.begin() as connection:
            # Locked, skipping those a cancel (or another relay) holds: no relay waits for
            # an application's transaction, and none can deadlock with it.
            due = (
                select(records.c.seq)
                .where(*delayed, records.c.deliver_at <= now)
                .order_by(records.c.deliver_at)
                .limit(limit)
            )
            seqs = list(connection.execute(self.sql.claim_lock(due)).scalars())
            if seqs:
                connection.execute(
                    update(records)
                    # DELAYED still: on SQLite a cancel may have committed since the select.
                    .where(records.c.seq.in_(seqs), in_state(records, RecordState.DELAYED))
                    .values(state=RecordState.READY.value, updated_at=utcnow())
                )
            # Still to come: a due record skipped (locked) waits for a later look, not for a
            # look at its due time, already past (the relay would look again at once).
            upcoming = connection.execute(
                select(records.c.deliver_at)
                .where(*delayed, records.c.deliver_at > now)
                .order_by(records.c.deliver_at)
                .limit(1)
            ).scalar()
        return len(seqs), _aware(upcoming)

    # -- relay ---------------------------------------------------------------------------

    def ready_groups(self, connection: Connection) -> list[str]:
        """The producer groups that have READY records, in name order.

        One index probe per group (the smallest name above the last one found), not a scan
        of the READY records.
        """
        records = self.tables.records
        self.sql.index_scans_only(connection)
        found: list[str] = []
        while True:
            # ORDER BY .. LIMIT 1, not min(): with stale statistics, min() was planned as an
            # aggregate over every entry above the last name.
            query = select(records.c.producer_group).where(in_state(records, RecordState.READY))
            if found:
                query = query.where(records.c.producer_group > found[-1])
            group = connection.execute(query.order_by(records.c.producer_group).limit(1)).scalar()
            if group is None:
                return found
            found.append(group)

    def delayed_groups(self, connection: Connection) -> list[str]:
        """The producer groups that have DELAYED records, in name order (one probe of the
        DELAYED index per group, as :meth:`ready_groups`)."""
        records = self.tables.records
        found: list[str] = []
        while True:
            query = select(records.c.producer_group).where(in_state(records, RecordState.DELAYED))
            if found:
                query = query.where(records.c.producer_group > found[-1])
            group = connection.execute(query.order_by(records.c.producer_group).limit(1)).scalar()
            if group is None:
                return found
            found.append(group)

    def claim_ready(
        self, connection: Connection, limit: int, *, group: str, after: int = 0
    ) -> list[ClaimedRecord]:
        """Lock up to ``limit`` due READY records of ``group``, oldest first, that may be
        published now.

        ``after`` starts the search above that sequence number: records below it are not
        claimed (see :class:`~txmq.outbox.relay.Relay` for why and when it is used).

        Order is kept per producer group, topic and key (brokers order messages per topic
        and key: a Kafka partition, a RabbitMQ queue): a keyed record is held back while an
        earlier READY record of its group, topic and key is not in the claimed set (another
        relay holds it, or it is backing off after a failed publish). Another group's record
        never holds it back: that group may not be relayed at all.
        """
        records = self.tables.records
        self.sql.index_scans_only(connection)
        rows = self._claim.run(
            connection,
            {
                "group": group,
                "after": after,
                "now": utcnow(),
                "limit": limit,
            },
        )
        # Records of one producer mostly carry the same headers: each distinct text is
        # decoded once per batch, and its messages share the read-only mapping.
        decoded: dict[str, MappingProxyType[str, str]] = {}
        claimed = []
        for seq, message_id, topic, key, headers, body, attempts in rows or ():
            mapping = decoded.get(headers)
            if mapping is None:
                mapping = decoded[headers] = MappingProxyType(json.loads(headers))
            claimed.append(
                ClaimedRecord(
                    seq,
                    restore_message(
                        topic=topic, body=bytes(body), key=key, headers=mapping, id=message_id
                    ),
                    attempts,
                )
            )
        keyed = {r.message.key for r in claimed if r.message.key is not None}
        if not keyed:
            return claimed
        topics = {r.message.topic for r in claimed if r.message.key is not None}
        claimed_seqs = {r.seq for r in claimed}
        blocked: set[tuple[str, str]] = set()
        publishable: set[int] = set()
        earlier = connection.execute(
            select(records.c.seq, records.c.topic, records.c.key)
            .where(
                in_state(records, RecordState.READY),
                records.c.key.is_not(None),
                # Both leading columns of the (topic, key, seq) index, so that it is sought,
                # not scanned through every keyed record waiting.
                records.c.topic.in_(topics),
                records.c.key.in_(keyed),
                records.c.producer_group == group,
                records.c.seq <= max(claimed_seqs),
            )
            .order_by(records.c.seq)
        )
        for seq, topic, key in earlier:
            if (topic, key) in blocked:
                continue
            if seq in claimed_seqs:
                publishable.add(seq)
            else:
                blocked.add((topic, key))
        return [r for r in claimed if r.message.key is None or r.seq in publishable]

    def mark_sent(self, connection: Connection, seqs: Sequence[int], *, keep: bool = True) -> None:
        """Mark confirmed records SENT, or delete them at once when ``keep`` is False (no
        history, and about five times cheaper for PostgreSQL than the update)."""
        if not seqs:
            return
        if keep:
            params = {"seqs": list(seqs), "sent": RecordState.SENT.value, "now": utcnow()}
            self._mark_sent.run(connection, params)
        else:
            self._delete_sent.run(connection, {"seqs": list(seqs)})

    def mark_failed(self, connection: Connection, seq: int, error: str, retry_at: datetime) -> None:
        records = self.tables.records
        connection.execute(
            update(records)
            .where(records.c.seq == seq)
            .values(
                publish_attempts=records.c.publish_attempts + 1,
                last_error=error[:2000],
                check_after=retry_at,
                updated_at=utcnow(),
            )
        )

    def mark_refused(self, connection: Connection, seq: int, error: str) -> None:
        """Move a record the broker refused for good to FAILED, with its error."""
        records = self.tables.records
        connection.execute(
            update(records)
            .where(records.c.seq == seq)
            .values(
                state=RecordState.FAILED.value,
                publish_attempts=records.c.publish_attempts + 1,
                last_error=error[:2000],
                check_after=None,
                updated_at=utcnow(),
            )
        )

    def retry_times(self, seqs: Iterable[int]) -> list[datetime]:
        """When each of these records, if still READY, may be published again."""
        records = self.tables.records
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(records.c.check_after).where(
                    records.c.seq.in_(list(seqs)), in_state(records, RecordState.READY)
                )
            )
            return [_aware(at) or utcnow() for (at,) in rows]

    # -- check-back ------------------------------------------------------------------------

    def claim_due_checks(
        self, connection: Connection, group: str, limit: int, *, now: datetime
    ) -> list[OutboxRecord]:
        """Lock PREPARED records of ``group`` whose check-back is due at ``now``, oldest first."""
        records = self.tables.records
        query = (
            select(records)
            .where(
                in_state(records, RecordState.PREPARED),
                records.c.producer_group == group,
                records.c.check_after <= now,
            )
            .order_by(records.c.check_after)
            .limit(limit)
        )
        return [self._record(row) for row in connection.execute(self.sql.claim_lock(query))]

    def postpone_check(
        self,
        connection: Connection,
        seq: int,
        check_count: int,
        next_check: datetime,
        *,
        due: datetime,
    ) -> None:
        """Count a check-back that answered UNKNOWN, if the record is still due by ``due``."""
        records = self.tables.records
        connection.execute(
            update(records)
            .where(records.c.seq == seq, *self._still_due(due))
            .values(check_count=check_count, check_after=next_check, updated_at=utcnow())
        )

    def count_check(
        self, connection: Connection, seq: int, check_count: int, *, due: datetime
    ) -> None:
        records = self.tables.records
        connection.execute(
            update(records)
            .where(records.c.seq == seq, *self._still_due(due))
            .values(check_count=check_count)
        )

    def _still_due(self, due: datetime | None) -> list[ColumnElement[bool]]:
        """The condition of a check-back's write: still PREPARED and due by ``due`` (no
        executor has taken a lease on it since it was claimed)."""
        if due is None:
            return []
        records = self.tables.records
        return [
            in_state(records, RecordState.PREPARED),
            records.c.check_after <= due,
        ]

    def lease_prepared(self, message_id: str, until: datetime) -> bool:
        """Move a PREPARED record's next check-back to ``until``, in a transaction of its
        own; return False if it is no longer PREPARED (someone decided it).

        A running executor holds this lease and renews it, so that check-backs keep away
        from its record; if its producer dies the lease runs out and check-back resolves it.
        """
        records = self.tables.records
        with self.engine.begin() as connection:
            moved = connection.execute(
                update(records)
                .where(records.c.id == message_id, in_state(records, RecordState.PREPARED))
                .values(check_after=until)
            ).rowcount
        return bool(moved == 1)

    # -- operators -------------------------------------------------------------------------

    def get(self, message_id: str) -> OutboxRecord:
        records = self.tables.records
        with self.engine.connect() as connection:
            row = connection.execute(select(records).where(records.c.id == message_id)).first()
        if row is None:
            raise RecordNotFound(f"no outbox record with id {message_id!r}")
        return self._record(row)

    def list(
        self,
        state: RecordState,
        *,
        groups: Collection[str] | None = None,
        limit: int = 100,
    ) -> list[OutboxRecord]:
        """Records in ``state`` of ``groups`` (None: of every group), oldest first."""
        records = self.tables.records
        query = select(records).where(in_state(records, state))
        if groups is not None:
            query = query.where(records.c.producer_group.in_(groups))
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(records.c.seq).limit(limit))
            return [self._record(row) for row in rows]

    def counts(self, *, groups: Collection[str] | None = None) -> dict[str, int]:
        """Records per state, of ``groups`` (None: of every group)."""
        records = self.tables.records
        query = select(records.c.state, func.count()).group_by(records.c.state)
        if groups is not None:
            query = query.where(records.c.producer_group.in_(groups))
        with self.engine.connect() as connection:
            return {state: count for state, count in connection.execute(query)}

    def group_counts(self, groups: Collection[str] | None = None) -> dict[str, dict[str, int]]:
        """Records per producer group and state, of ``groups`` (None: of every group)."""
        records = self.tables.records
        query = select(records.c.producer_group, records.c.state, func.count()).group_by(
            records.c.producer_group, records.c.state
        )
        if groups is not None:
            query = query.where(records.c.producer_group.in_(groups))
        counts: dict[str, dict[str, int]] = {}
        with self.engine.connect() as connection:
            for group, state, count in connection.execute(query):
                counts.setdefault(group, {})[state] = count
        return counts

    def resolve(
        self,
        message_id: str,
        to: RecordState,
        *,
        expected: Iterable[RecordState] = (RecordState.PARKED,),
        reset_checks: bool = False,
        group: str | None = None,
    ) -> None:
        """Operator decision on a record (e.g. PARKED -> READY); raise :class:`RecordNotFound`
        if it is not in ``expected`` (or not of ``group``, when given)."""
        records = self.tables.records
        values: dict[str, Any] = {"state": to.value, "updated_at": utcnow()}
        if reset_checks:
            values |= {"check_count": 0, "check_after": utcnow()}
        elif to is RecordState.READY:
            values["check_after"] = None
        values["state"] = self._ready_or_delayed(to, values["updated_at"])
        where = [records.c.id == message_id, in_state(records, *expected)]
        if group is not None:
            where.append(records.c.producer_group == group)
        with self.engine.begin() as connection:
            moved = connection.execute(update(records).where(*where).values(values)).rowcount
            if not moved:
                of_group = f" of group {group!r}" if group is not None else ""
                raise RecordNotFound(
                    f"no outbox record {message_id!r}{of_group} in state "
                    f"{' or '.join(s.value for s in expected)}"
                )

    def retry_failed(self, message_id: str) -> None:
        """FAILED -> READY with its publish attempts reset; raise if it is not FAILED."""
        records = self.tables.records
        with self.engine.begin() as connection:
            moved = connection.execute(
                update(records)
                .where(records.c.id == message_id, in_state(records, RecordState.FAILED))
                .values(
                    state=RecordState.READY.value,
                    publish_attempts=0,
                    check_after=None,
                    updated_at=utcnow(),
                )
            ).rowcount
        if not moved:
            raise RecordNotFound(f"no outbox record {message_id!r} in state FAILED")

    def discard_failed(self, message_id: str) -> None:
        """Delete a FAILED record (it is never published); raise if it is not FAILED."""
        records = self.tables.records
        with self.engine.begin() as connection:
            deleted = connection.execute(
                delete(records).where(
                    records.c.id == message_id, in_state(records, RecordState.FAILED)
                )
            ).rowcount
        if not deleted:
            raise RecordNotFound(f"no outbox record {message_id!r} in state FAILED")

    def purge(
        self,
        older_than: timedelta,
        *,
        groups: Collection[str] | None = None,
        batch: int = 5000,
    ) -> int:
        """Delete SENT, ROLLED_BACK and CANCELLED records of ``groups`` (None: of every
        group) older than ``older_than``, and markers older than that and
        :data:`MARKER_RETENTION` whose record is no longer PREPARED (markers belong to no
        group: a marker outlives its record)."""
        records, markers = self.tables.records, self.tables.markers
        cutoff = utcnow() - older_than
        done = 0
        # Two conditions, each the predicate of its own partial index.
        finished = in_state(records, RecordState.SENT, RecordState.ROLLED_BACK)
        cancelled = in_state(records, RecordState.CANCELLED)
        for ended in (finished, cancelled):
            while True:
                with self.queue_engine.begin() as connection:
                    victims = select(records.c.seq).where(ended, records.c.updated_at < cutoff)
                    if groups is not None:
                        victims = victims.where(records.c.producer_group.in_(groups))
                    victims = victims.limit(batch)
                    seqs = list(connection.execute(victims).scalars())
                    if not seqs:
                        break
                    connection.execute(delete(records).where(records.c.seq.in_(seqs)))
                    done += len(seqs)
        with self.queue_engine.begin() as connection:
            still_pending = select(records.c.tx_key).where(
                records.c.tx_key.is_not(None), in_state(records, RecordState.PREPARED)
            )
            marker_cutoff = utcnow() - max(older_than, MARKER_RETENTION)
            connection.execute(
                delete(markers).where(
                    and_(
                        markers.c.created_at < marker_cutoff,
                        markers.c.tx_key.not_in(still_pending),
                    )
                )
            )
        return done

    # -- rows ------------------------------------------------------------------------------

    def _record(self, row: Row[Any]) -> OutboxRecord:
        m = row._mapping
        message = restore_message(
            topic=m["topic"],
            body=bytes(m["body"]),
            key=m["key"],
            headers=json.loads(m["headers"]),
            id=m["id"],
        )
        created = _aware(m["created_at"])
        updated = _aware(m["updated_at"])
        assert created is not None  # NOT NULL column
        assert updated is not None
        return OutboxRecord(
            seq=m["seq"],
            message=message,
            producer_group=m["producer_group"],
            state=RecordState(m["state"]),
            check_count=m["check_count"],
            publish_attempts=m["publish_attempts"],
            check_after=_aware(m["check_after"]),
            deliver_at=_aware(m["deliver_at"]),
            created_at=created,
            updated_at=updated,
            tx_key=m["tx_key"],
            last_error=m["last_error"],
        )
