"""The relay: READY records -> broker -> SENT.

Each pass claims a batch of READY records (``FOR UPDATE SKIP LOCKED``), publishes it, waits
for the broker's confirmation (RabbitMQ publisher confirms; one Kafka transaction per batch)
and marks the confirmed records SENT in the same database transaction that holds their locks.
Any number of relays may run; a crash between the broker's confirmation and the database
commit republishes those records with the same message ids (at-least-once).

A relay runs ``concurrency`` lanes, each with its own database transaction and publisher
connection. The claim keeps same-key records in order across lanes and across relays. Only
the first lane waits for new records (PostgreSQL's NOTIFY, or its poll interval), so that
one staged record does not wake every lane for one claim that finds it and others that find
nothing. The others join it while there is a backlog (a lane's last batch was full), so
that one lane claims and marks while another waits for the broker, and otherwise look every
``poll_interval``. Below a backlog, then, a record staged while the first lane publishes
waits for that batch.

Batches grow with the load: a lane whose batch found records but not a full batch waits
``linger`` before it looks again, so the records staged meanwhile go out together. An idle
relay publishes a record as soon as it is woken; a relay with a backlog claims full batches
without pause.

Delayed records (DELAYED, see :mod:`txmq.states`) are not claimed: a relay moves those due
to READY at least every ``poll_interval``, and at the due time of the earliest one it saw
waiting (it wakes for it), so a delayed message is published within ``poll_interval`` of
its due time unless the relay is behind. With none waiting that costs one indexed query per
``poll_interval``, not one per batch.

A relay publishes the records of the producer groups it is given, and no other group's:
groups sharing an outbox table may publish to different brokers. On SQLite only one relay of
a group works at a time (see :mod:`txmq.outbox.worker_lock`); the others stand by.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from txmq.adapters.base import Adapter, Publisher, PublishOutcome
from txmq.errors import (
    BrokerError,
    ConfigurationError,
    MessageTooLarge,
    PublishError,
    PublishRefused,
    RecordsFailed,
)
from txmq.message import Message, validate_name
from txmq.outbox.store import ClaimedRecord, OutboxStore, utcnow
from txmq.outbox.worker_lock import WorkerLock
from txmq.sql.dialect import Waiter
from txmq.supervision import Health, SupervisedLoop, health_of
from txmq.telemetry import (
    RELAY_BATCH_SECONDS,
    RELAY_BATCH_SIZE,
    RELAY_FAILED,
    RELAY_FAILURES,
    RELAY_PUBLISHED,
)
from txmq.tracing import publishing

log = logging.getLogger("txmq.relay")

#: Set by ``txmq chaos`` only: ``relay-after-confirm:<n>`` makes the relay SIGKILL its own
#: process once the broker has confirmed its n-th batch, before that batch is marked SENT
#: (the crash the outbox's at-least-once promise is about).
ENV_KILL = "TXMQ_CHAOS_KILL"
KILL_AFTER_CONFIRM = "relay-after-confirm"


class Relay:
    """Publishes READY outbox records.

    Args:
        broker: the adapter to publish with.
        store: the outbox store (engine + tables).
        groups: the producer groups whose records this relay publishes.
        all_groups: publish the records of every producer group instead, found in the
            table at each pass (exactly one of ``groups`` and ``all_groups`` must be given).
        batch_size: records per claim (one Kafka transaction, one confirm wait).
        concurrency: lanes working at once (one DB connection and one broker connection
            each); 1 on databases without ``SKIP LOCKED`` (SQLite).
        poll_interval: longest wait between passes when idle (PostgreSQL wakes it earlier
            through LISTEN/NOTIFY, and it wakes for a delayed record's due time), and
            between two looks for due delayed records.
        retention: SENT and ROLLED_BACK records older than this are purged; with
            ``timedelta(0)`` a record is deleted as soon as the broker confirmed it (no SENT
            history, and the cheapest mark).
        linger: seconds a lane waits after a batch that found records but not a full one
            before it looks again (0: at once). Under a steady load a batch then holds what
            was staged while the previous one was published plus ``linger``, instead of one
            or two records per claim; an idle relay still publishes a record as soon as it
            is woken. A record staged during the linger waits for it; fewer claims leave
            more CPU for everything else (see ``docs/performance.md``).
        instance_id: stable name of this relay; on Kafka lane ``n`` uses
            ``transactional.id = txmq-relay-<instance_id>-<n>``, so a restarted relay fences
            its previous incarnation.
        max_backoff: longest wait after broker errors or failed publishes.
        max_refused_attempts: a record the broker refuses for good (too large, not
            authorised, invalid topic: :class:`~txmq.errors.PublishRefused`, or larger than
            this broker's ``max_body_bytes``) goes FAILED when this many attempts to
            publish it (counting every attempt, refused or not) have been made; before that
            it is retried with backoff like any failed publish.

    Raises:
        ConfigurationError: neither or both of ``groups`` and ``all_groups``, or no group.
        InvalidMessage: a group name is not valid.
    """

    def __init__(
        self,
        broker: Adapter,
        store: OutboxStore,
        *,
        groups: Collection[str] | None = None,
        all_groups: bool = False,
        batch_size: int = 1000,
        concurrency: int = 2,
        poll_interval: float = 1.0,
        retention: timedelta = timedelta(days=1),
        purge_interval: float = 60.0,
        linger: float = 0.002,
        instance_id: str | None = None,
        max_backoff: float = 30.0,
        max_refused_attempts: int = 3,
    ) -> None:
        if batch_size < 1 or concurrency < 1 or max_refused_attempts < 1:
            raise ValueError("batch_size, concurrency and max_refused_attempts must be at least 1")
        if not 0 <= linger <= poll_interval:
            raise ValueError(f"linger must be from 0 to poll_interval, not {linger!r}")
        self.linger = linger
        self.max_refused_attempts = max_refused_attempts
        if isinstance(groups, str):
            groups = [groups]  # one name, not its characters
        if all_groups == (groups is not None) or (groups is not None and not groups):
            raise ConfigurationError(
                "a relay needs groups=[...] (the producer groups it publishes) "
                "or all_groups=True, not both"
            )
        #: The producer groups relayed, in claim order; None: every group.
        self.groups: tuple[str, ...] | None = (
            None
            if groups is None
            else tuple(dict.fromkeys(validate_name(g, "producer group") for g in groups))
        )
        self.broker = broker
        self.store = store
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retention = retention
        self.purge_interval = purge_interval
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self.max_backoff = max_backoff
        if not store.skip_locked and concurrency > 1:
            # Without SKIP LOCKED two lanes would claim the same records.
            log.info("%s cannot claim with SKIP LOCKED: one relay lane", store.dialect)
            concurrency = 1
        self._worker_lock = WorkerLock(store, "relay", self.groups)
        self._standing_by = False
        self._floor = _ClaimFloor()
        self._due = _DueClock(poll_interval)
        self._lanes = [_Lane(self, n) for n in range(concurrency)]
        self._stop = threading.Event()
        #: Set while a lane's last batch was full: the lanes after the first then work too.
        self._backlog = threading.Event()
        self._loops: list[SupervisedLoop] = []
        self._purge_lock = threading.Lock()
        self._last_purge = 0.0
        self._kill_after_confirm = _KillAfterConfirm.from_env()

    @property
    def active(self) -> bool:
        """False while this relay stands by because another relay of its groups holds the
        SQLite database; True otherwise (on other databases, always)."""
        return self._worker_lock.held

    def connect(self) -> Relay:
        """Check the outbox tables, then open every lane's broker connection now (on Kafka:
        ``init_transactions``, which also fences a previous incarnation), so that a database
        or broker problem shows at start and the first batch does not pay for it.

        Raises:
            SchemaMissing: the outbox tables do not exist.
            BrokerError: the broker cannot be reached.
        """
        self.store.check_schema()
        for lane in self._lanes:
            try:
                lane.publisher().connect()
            except BrokerError:
                lane.drop_publisher()
                raise
        return self

    def run_once(self) -> int:
        """Claim, publish and mark one batch of each relayed group on the first lane; return
        how many went SENT.

        Raises:
            BrokerError: the broker is unreachable; nothing was marked, the claim is released.
            RecordsFailed: records of the batch went FAILED (the rest were marked as usual).
            WorkerBusy: on SQLite, another relay of these groups is working.
        """
        self._due.look_now()
        with self._worker_lock.holding():
            done = self._lanes[0].run_once()
        if done.failed:
            raise RecordsFailed(done.failed, done.sent)
        return done.sent

    def drain(self, timeout: float = 60.0) -> int:
        """Run passes on every lane until no READY record is due (or ``timeout``).

        A record the broker refused is waited for until it is published or FAILED (its
        retries come within seconds), so that a drain reports it; records backing off
        after other failures (broker nacks, timeouts) stay READY for later passes.

        Returns how many records were marked SENT.

        Raises:
            BrokerError: the broker is unreachable.
            RecordsFailed: records went FAILED during the drain (after it finished).
            WorkerBusy: on SQLite, another relay of these groups is working.
        """
        self._due.look_now()
        with self._worker_lock.holding():
            return self._drain(timeout)

    def _drain(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        total = _Pass()
        while True:
            done = self._drain_pass(deadline)
            total.sent += done.sent
            total.failed += done.failed
            total.refused = (total.refused - done.settled) | done.refused
            waiting = self.store.retry_times(total.refused) if total.refused else []
            if not waiting:
                break
            pause = (min(waiting) - utcnow()).total_seconds()
            if time.monotonic() + pause >= deadline:
                break
            time.sleep(max(0.0, pause))  # until the refused record's next attempt is due
        if total.failed:
            raise RecordsFailed(total.failed, total.sent)
        return total.sent

    def _drain_pass(self, deadline: float) -> _Pass:
        """Passes on every lane until none finds a due record (or ``deadline``)."""
        results = [_Pass() for _ in self._lanes]
        errors: list[BaseException] = []

        def work(lane: _Lane) -> None:
            result = results[lane.number]
            try:
                while time.monotonic() < deadline:
                    done = lane.run_once()
                    result.add(done)
                    if done.claimed == 0:
                        return
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(lane,)) for lane in self._lanes[1:]]
        for thread in threads:
            thread.start()
        work(self._lanes[0])
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        total = _Pass()
        for result in results:
            total.add(result)
        return total

    # -- background loop -------------------------------------------------------------------

    def start(self) -> Relay:
        """Run every lane in a daemon thread until :meth:`stop`.

        Each lane survives database and broker outages (it backs off and resumes by itself);
        :meth:`health` tells whether one has died.
        """
        if not any(loop.alive for loop in self._loops):
            self._stop.clear()
            self._backlog.clear()
            self._loops = [self._supervised(lane) for lane in self._lanes]
            for loop in self._loops:
                loop.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Let each lane finish its batch, then stop and close the publishers."""
        self._stop.set()
        self._backlog.set()  # the lanes waiting for a backlog see the stop at once
        deadline = time.monotonic() + timeout
        for loop in self._loops:
            loop.join(max(0.0, deadline - time.monotonic()))
        for lane in self._lanes:
            lane.drop_publisher()

    def run(self) -> None:
        """Run every lane until :meth:`stop` (blocking)."""
        self.start()
        for loop in self._loops:
            loop.join()

    def health(self) -> Health:
        """How the lanes started by :meth:`start` are doing (see :mod:`txmq.supervision`)."""
        return health_of(self._loops)

    def healthy(self) -> bool:
        """False once a lane has died (a fatal error or an unexpected exception)."""
        return self.health().healthy

    def _supervised(self, lane: _Lane) -> SupervisedLoop:
        notifications: Waiter = (
            self.store.sql.waiter(self.store.engine, self._stop)
            if lane.number == 0
            else _BacklogWaiter(self._backlog, self._stop)
        )

        def step() -> bool:
            if not self._may_work():
                return False  # stands by: waits like an idle lane, then asks again
            done = lane.run_once()
            self._maybe_purge()
            if done.full:
                self._backlog.set()
            elif lane.number:
                self._backlog.clear()
            if done.claimed and not done.full:
                self._stop.wait(self.linger)
            return done.full

        def on_error(exc: BaseException) -> None:
            if isinstance(exc, BrokerError):
                lane.drop_publisher()
            else:
                # The database went away: the LISTEN connection went with it.
                notifications.close()

        def on_exit() -> None:
            notifications.close()
            lane.drop_publisher()
            self._worker_lock.release()

        return SupervisedLoop(
            name=f"txmq-relay-{lane.number}",
            step=step,
            stop=self._stop,
            # Standing by, it has no due time to wake for: the working relay has.
            idle=lambda: notifications.wait(
                self._due.idle_wait() if self.active else self.poll_interval
            ),
            on_error=on_error,
            on_exit=on_exit,
            max_backoff=self.max_backoff,
        )

    def _may_work(self) -> bool:
        """Take the SQLite relay lock if it is free; False: another relay holds it."""
        if self._worker_lock.held:
            return True
        if self._worker_lock.acquire():
            log.info("relay %s works: it holds %s", self.instance_id, self._worker_lock.description)
            self._standing_by = False
            return True
        if not self._standing_by:
            log.info(
                "relay %s stands by: another relay holds %s",
                self.instance_id,
                self._worker_lock.description,
            )
            self._standing_by = True
        return False

    def _release_due(self) -> None:
        """Move the due delayed records of the relayed groups to READY, if it is time to
        look (see :class:`_DueClock`).

        One lane looks at a time; another that finds it is time waits for that look, so
        that no lane claims a later record of a key ahead of a due delayed one.
        """
        if not self._due.time_to_look(utcnow()):
            return
        with self._due.looking:
            now = utcnow()
            if not self._due.time_to_look(now):
                return  # another lane just looked
            store = self.store
            if self.groups is None:
                with store.queue_engine.begin() as connection:
                    groups: Collection[str] = store.delayed_groups(connection)
            else:
                groups = self.groups
            released, upcoming, more = 0, None, False
            for group in groups:
                moved, due = store.release_due(group, now=now, limit=RELEASE_BATCH)
                released += moved
                more = more or moved == RELEASE_BATCH
                if due is not None and (upcoming is None or due < upcoming):
                    upcoming = due
            if released:
                log.debug("%d delayed records are due", released)
                self._floor.reset()  # they keep their sequence numbers, below the floor
            self._due.looked(now, now if more else upcoming)

    def _confirmed(self, outcomes: list[PublishOutcome]) -> None:
        """The broker answered a batch, not yet marked SENT: the armed kill point's moment
        (when it confirmed any of it)."""
        if self._kill_after_confirm is not None and any(o.ok for o in outcomes):
            self._kill_after_confirm.confirmed()

    def _maybe_purge(self) -> None:
        with self._purge_lock:
            now = time.monotonic()
            if now - self._last_purge < self.purge_interval:
                return
            self._last_purge = now
        purged = self.store.purge(self.retention, groups=self.groups)
        if purged:
            log.info("purged %d finished outbox records", purged)


#: Most delayed records of one group a relay moves to READY in one transaction.
RELEASE_BATCH = 10_000


class _BacklogWaiter:
    """What a relay lane after the first waits on: a backlog or stop, at most ``seconds``.

    In short slices: another lane may clear the backlog just after :meth:`Relay.stop` set
    it, and the stop must still be seen at once."""

    def __init__(self, backlog: threading.Event, stop: threading.Event) -> None:
        self._backlog = backlog
        self._stop = stop

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._backlog.wait(min(left, 0.25)):
                return

    def close(self) -> None:
        """Nothing to release."""


class _DueClock:
    """When a relay next looks for due delayed records, shared by its lanes: at the due
    time of the earliest record it saw waiting, and at least every ``poll_interval``."""

    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self.looking = threading.Lock()
        self._next: datetime | None = None  # None: look at the next pass

    def look_now(self) -> None:
        """Have the next pass look, whenever the last one did (a caller's drain or pass)."""
        self._next = None

    def time_to_look(self, now: datetime) -> bool:
        return self._next is None or now >= self._next

    def looked(self, now: datetime, upcoming: datetime | None) -> None:
        """Record a look at ``now`` that found ``upcoming`` the earliest still waiting."""
        latest = now + timedelta(seconds=self.poll_interval)
        self._next = latest if upcoming is None else min(latest, upcoming)

    def idle_wait(self) -> float:
        """How long an idle lane waits: ``poll_interval``, or less to wake for the next look."""
        if self._next is None:
            return self.poll_interval
        until = (self._next - utcnow()).total_seconds()
        # Not below a hundredth of a second: a look in progress moves the time on.
        return max(0.01, min(self.poll_interval, until))


#: Longest time a relay working through a backlog goes without a claim from the start of
#: the outbox (see :class:`_ClaimFloor`).
FULL_CLAIM_INTERVAL = 1.0


class _ClaimFloor:
    """Where a relay's next claim starts, shared by its lanes.

    Through a backlog, claims start above the highest record the relay claimed last rather
    than at the start of the READY index. Until VACUUM has run, that index still holds an
    entry for every record published since, and a claim from the start walks them all:
    without vacuum, 300k records into a drain each claim had become ten times slower.

    Records below the floor can still become claimable: a failed publish that is due
    again, a staging transaction that committed after later ones, a committed half message,
    a resumed parked record. A claim from the start finds them; the relay makes one at
    least every :data:`FULL_CLAIM_INTERVAL`, after any claim that came back short of a
    batch, after a failed pass, and before it reports the outbox empty.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per relayed group, each claimed through its own range of the READY index.
        self._floor: dict[str, int] = {}
        self._last_full: dict[str, float] = {}

    def next(self, group: str) -> int:
        """The sequence number the next claim of ``group`` starts above (0: from the start)."""
        with self._lock:
            now = time.monotonic()
            floor = self._floor.get(group, 0)
            if floor and now - self._last_full.get(group, -FULL_CLAIM_INTERVAL) < (
                FULL_CLAIM_INTERVAL
            ):
                return floor
            self._last_full[group] = now
            return 0

    def claimed(self, group: str, records: list[ClaimedRecord], *, full_batch: bool) -> None:
        with self._lock:
            if full_batch:  # claims come in sequence order
                self._floor[group] = max(self._floor.get(group, 0), records[-1].seq)
            else:
                self._floor[group] = 0

    def reset(self) -> None:
        with self._lock:
            self._floor.clear()


@dataclass(slots=True)
class _Pass:
    """What one or more relay passes did."""

    claimed: int = 0
    sent: int = 0
    #: A claim came back with a whole batch: more may be waiting.
    full: bool = False
    #: ``(message id, error)`` of the records that went FAILED.
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: Records refused but still READY, to be tried again soon.
    refused: set[int] = field(default_factory=set)
    #: Records that were published, went FAILED, or failed for another reason.
    settled: set[int] = field(default_factory=set)

    def add(self, other: _Pass) -> None:
        self.claimed += other.claimed
        self.sent += other.sent
        self.full = self.full or other.full
        self.failed += other.failed
        self.refused = (self.refused - other.settled) | other.refused
        self.settled |= other.settled


def _refused(error: BaseException | None) -> bool:
    """Whether the broker refused for good (publishing again fails the same way)."""
    return isinstance(error, (PublishRefused, MessageTooLarge))


class _Lane:
    """One claim-publish-mark loop with its own publisher."""

    def __init__(self, relay: Relay, number: int) -> None:
        self.relay = relay
        self.number = number
        self._publisher: Publisher | None = None

    def publisher(self) -> Publisher:
        if self._publisher is None:
            # A stable identity per lane: where batches are broker transactions, a
            # restarted relay fences the lane it replaces.
            identity = f"relay-{self.relay.instance_id}-{self.number}"
            self._publisher = self.relay.broker.publisher(identity=identity)
        return self._publisher

    def drop_publisher(self) -> None:
        if self._publisher is not None:
            try:
                self._publisher.close()
            except Exception:  # closing a broken publisher must not hide the first error
                log.debug("closing publisher failed", exc_info=True)
            self._publisher = None

    def _publish(self, messages: list[Message]) -> list[PublishOutcome]:
        try:
            with publishing(messages, system=self.relay.broker.system) as settled:
                outcomes = self.publisher().publish(messages)
                settled(outcomes)
            self.relay._confirmed(outcomes)
            return outcomes
        except BrokerError:
            self.drop_publisher()
            raise

    def _isolate(
        self, failed: list[tuple[ClaimedRecord, Exception | None]], sent: list[int]
    ) -> list[tuple[ClaimedRecord, Exception | None]]:
        """Publish each record refused with others alone, to learn which the broker refuses.

        A broker refuses a whole produce request (Kafka: every message of a partition in the
        transaction) for one message too large for its topic; the innocent ones must not go
        FAILED with it. Records are tried in order, and none behind a still failing record
        of its key, so per-key order holds; such a record was not refused itself, and is
        tried again (without backoff) once the one ahead is published or FAILED. Appends
        what went through to ``sent``.
        """
        still: list[tuple[ClaimedRecord, Exception | None]] = []
        held: dict[tuple[str, str], str] = {}
        for record, together in failed:
            key = _key(record)
            error = together
            if key is not None and key in held:
                if _refused(together):
                    error = PublishError(f"held behind {held[key]} of its key, which failed")
            elif _refused(together):
                (outcome,) = self._publish([record.message])
                if outcome.ok:
                    sent.append(record.seq)
                    continue
                error = outcome.error
            still.append((record, error))
            if key is not None:
                held.setdefault(key, record.message.id)
        return still

    def run_once(self) -> _Pass:
        """One batch of each relayed group (:attr:`_Pass.full` if any batch was full)."""
        done = _Pass()
        try:
            self.relay._release_due()
            for group in self.relay.groups or self._ready_groups():
                done.add(self._run_once(group))
        except BaseException:
            self.relay._floor.reset()  # the batch went back to READY, below the floor
            raise
        return done

    def _ready_groups(self) -> list[str]:
        store = self.relay.store
        with store.queue_engine.begin() as connection:
            return store.ready_groups(connection)

    def _run_once(self, group: str) -> _Pass:
        """One batch of ``group``: claimed, published and marked."""
        relay, store = self.relay, self.relay.store
        started = time.perf_counter()
        done = _Pass()
        limit = relay.broker.publish_limit()  # asks the broker once, outside the transaction
        with store.queue_engine.begin() as connection:
            after = relay._floor.next(group)
            claimed = store.claim_ready(connection, relay.batch_size, group=group, after=after)
            if not claimed and after:
                # Nothing above the floor: look from the start before calling it empty.
                claimed = store.claim_ready(connection, relay.batch_size, group=group)
            full = len(claimed) == relay.batch_size
            relay._floor.claimed(group, claimed, full_batch=full)
            if not claimed:
                return done
            done.claimed = len(claimed)
            done.full = full
            # A record staged under a larger limit than this broker's would fail every batch
            # it is in (publish raises MessageTooLarge): it fails alone, like a refused one.
            records, too_large = _split_too_large(claimed, limit)
            outcomes: list[PublishOutcome] = []
            if records:
                outcomes = self._publish([r.message for r in records])
            sent = [r.seq for r, o in zip(records, outcomes, strict=True) if o.ok]
            failed = [(r, o.error) for r, o in zip(records, outcomes, strict=True) if not o.ok]
            if sum(_refused(error) for _, error in failed) > 1:
                failed = self._isolate(failed, sent)
            store.mark_sent(connection, sent, keep=relay.retention > timedelta(0))
            failed += too_large
            # A Kafka transaction fails as a whole when the broker refuses one of its
            # messages: the others are tried again at once, without the refused one.
            any_refused = any(_refused(error) for _, error in failed)
            for record, error in failed:
                text = f"{type(error).__name__}: {error}"
                if _refused(error) and record.publish_attempts + 1 >= relay.max_refused_attempts:
                    store.mark_refused(connection, record.seq, text)
                    done.failed.append((record.message.id, text))
                    log.error(
                        "publish of %s refused for good after %d attempts, now FAILED: %s",
                        *(record.message.id, record.publish_attempts + 1, error),
                        extra=_fields(record, "FAILED"),
                    )
                    continue
                if _refused(error) or not any_refused:
                    delay = min(relay.max_backoff, 0.5 * 2 ** min(record.publish_attempts, 10))
                else:
                    delay = 0.0
                store.mark_failed(connection, record.seq, text, utcnow() + timedelta(seconds=delay))
                if _refused(error):
                    done.refused.add(record.seq)
                log.warning(
                    "publish of %s failed: %s",
                    *(record.message.id, error),
                    extra=_fields(record, "READY"),
                )
            done.sent = len(sent)
            done.settled = {r.seq for r in claimed} - done.refused
        labels = (relay.broker.system, group)
        RELAY_PUBLISHED.labels(*labels).inc(len(sent))
        if failed:
            RELAY_FAILURES.labels(*labels).inc(len(failed))
        if done.failed:
            RELAY_FAILED.labels(*labels).inc(len(done.failed))
        RELAY_BATCH_SECONDS.labels(*labels).observe(time.perf_counter() - started)
        RELAY_BATCH_SIZE.labels(*labels).observe(done.claimed)
        return done


class _KillAfterConfirm:
    """The armed :data:`KILL_AFTER_CONFIRM` point: counts confirmed batches, all lanes
    together, and SIGKILLs the process at the n-th."""

    def __init__(self, count: int) -> None:
        self._left = count
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> _KillAfterConfirm | None:
        """The point armed by :data:`ENV_KILL`; None when it names another point (or none).

        Raises:
            ConfigurationError: :data:`KILL_AFTER_CONFIRM` without a count of at least 1.
        """
        point, _, count = os.environ.get(ENV_KILL, "").partition(":")
        if point != KILL_AFTER_CONFIRM:
            return None
        if not count.isdigit() or int(count) < 1:
            raise ConfigurationError(f"{ENV_KILL}: use {KILL_AFTER_CONFIRM}:<n>, n >= 1")
        return cls(int(count))

    def confirmed(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left <= 0:
                os.kill(os.getpid(), signal.SIGKILL)


def _key(record: ClaimedRecord) -> tuple[str, str] | None:
    message = record.message
    return None if message.key is None else (message.topic, message.key)


def _split_too_large(
    records: list[ClaimedRecord], limit: int
) -> tuple[list[ClaimedRecord], list[tuple[ClaimedRecord, Exception]]]:
    """The records to publish, and those larger than ``limit`` with their error.

    A later record with the topic and key of a too large one is in neither: it stays READY,
    and the claim holds it back behind the failed one.
    """
    publishable: list[ClaimedRecord] = []
    too_large: list[tuple[ClaimedRecord, Exception]] = []
    blocked: set[tuple[str, str]] = set()
    for record in records:
        message = record.message
        if message.key is not None and (message.topic, message.key) in blocked:
            continue
        try:
            message.check_size(limit)
        except MessageTooLarge as exc:
            too_large.append((record, exc))
            if message.key is not None:
                blocked.add((message.topic, message.key))
        else:
            publishable.append(record)
    return publishable, too_large


def _fields(record: ClaimedRecord, state: str) -> dict[str, object]:
    """The structured log fields of a publish of ``record`` (``extra`` of its log lines)."""
    return {
        "message_id": record.message.id,
        "topic": record.message.topic,
        "state": state,
        "attempt": record.publish_attempts + 1,
    }
