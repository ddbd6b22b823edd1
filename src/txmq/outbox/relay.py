"""The relay: READY records -> broker -> SENT.

Each pass claims a batch of READY records (``FOR UPDATE SKIP LOCKED``), publishes it, waits
for the broker's confirmation (RabbitMQ publisher confirms; one Kafka transaction per batch)
and marks the confirmed records SENT in the same database transaction that holds their locks.
Any number of relays may run; a crash between the broker's confirmation and the database
commit republishes those records with the same message ids (at-least-once).

A relay runs ``concurrency`` lanes, each with its own database transaction and publisher
connection, so that one lane claims and marks while another waits for the broker. The claim
keeps same-key records in order across lanes and across relays.

A relay publishes the records of the producer groups it is given, and no other group's:
groups sharing an outbox table may publish to different brokers. On SQLite only one relay of
a group works at a time (see :mod:`txmq.outbox.worker_lock`); the others stand by.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Collection
from datetime import timedelta
from typing import Any

from txmq.adapters.base import Adapter, Publisher, PublishOutcome
from txmq.errors import BrokerError, ConfigurationError, MessageTooLarge
from txmq.message import validate_name
from txmq.outbox.store import ClaimedRecord, OutboxStore, utcnow
from txmq.outbox.tables import NOTIFY_CHANNEL
from txmq.outbox.worker_lock import WorkerLock
from txmq.telemetry import RELAY_BATCH_SECONDS, RELAY_FAILURES, RELAY_PUBLISHED

log = logging.getLogger("txmq.relay")

Wait = Callable[[float], None]


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
            through LISTEN/NOTIFY).
        retention: SENT and ROLLED_BACK records older than this are purged; with
            ``timedelta(0)`` a record is deleted as soon as the broker confirmed it (no SENT
            history, and the cheapest mark).
        instance_id: stable name of this relay; on Kafka lane ``n`` uses
            ``transactional.id = txmq-relay-<instance_id>-<n>``, so a restarted relay fences
            its previous incarnation.
        max_backoff: longest wait after broker errors or failed publishes.

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
        instance_id: str | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
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
        self._lanes = [_Lane(self, n) for n in range(concurrency)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._purge_lock = threading.Lock()
        self._last_purge = 0.0

    @property
    def active(self) -> bool:
        """False while this relay stands by because another relay of its groups holds the
        SQLite database; True otherwise (on other databases, always)."""
        return self._worker_lock.held

    def connect(self) -> Relay:
        """Open every lane's broker connection now (on Kafka: ``init_transactions``, which
        also fences a previous incarnation), so that a broker problem shows at start and the
        first batch does not pay for it.

        Raises:
            BrokerError: the broker cannot be reached.
        """
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
            WorkerBusy: on SQLite, another relay of these groups is working.
        """
        with self._worker_lock.holding():
            return self._lanes[0].run_once()

    def drain(self, timeout: float = 60.0) -> int:
        """Run passes on every lane until no READY record is due (or ``timeout``).

        Returns how many records were marked SENT. Broker errors propagate.

        Raises:
            WorkerBusy: on SQLite, another relay of these groups is working.
        """
        with self._worker_lock.holding():
            return self._drain(timeout)

    def _drain(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        sent = [0] * len(self._lanes)
        errors: list[BaseException] = []

        def work(lane: _Lane) -> None:
            try:
                while time.monotonic() < deadline:
                    done = lane.run_once()
                    sent[lane.number] += done
                    if done == 0:
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
        return sum(sent)

    # -- background loop -------------------------------------------------------------------

    def start(self) -> Relay:
        """Run every lane in a daemon thread until :meth:`stop`."""
        if not any(thread.is_alive() for thread in self._threads):
            self._stop.clear()
            self._threads = [
                threading.Thread(target=self._run_lane, args=(lane,), name=f"txmq-relay-{n}")
                for n, lane in enumerate(self._lanes)
            ]
            for thread in self._threads:
                thread.daemon = True
                thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Let each lane finish its batch, then stop and close the publishers."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        for lane in self._lanes:
            lane.drop_publisher()

    def run(self) -> None:
        """Run every lane until :meth:`stop` (blocking)."""
        self.start()
        for thread in self._threads:
            thread.join()

    def _run_lane(self, lane: _Lane) -> None:
        wait, close_waiter = self._waiter()
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    if not self._may_work():
                        wait(self.poll_interval)
                        continue
                    lane.run_once()
                    failures = 0
                except BrokerError as exc:
                    failures += 1
                    delay = min(self.max_backoff, 0.2 * 2**failures) * random.uniform(0.5, 1.0)
                    log.warning("relay: broker unavailable (%s); retrying in %.1fs", exc, delay)
                    self._stop.wait(delay)
                    continue
                except Exception:
                    failures += 1
                    log.exception("relay pass failed")
                    self._stop.wait(min(self.max_backoff, 0.2 * 2**failures))
                    continue
                self._maybe_purge()
                if not lane.full:
                    wait(self.poll_interval)
        finally:
            close_waiter()
            lane.drop_publisher()
            self._worker_lock.release()

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

    def _maybe_purge(self) -> None:
        with self._purge_lock:
            now = time.monotonic()
            if now - self._last_purge < self.purge_interval:
                return
            self._last_purge = now
        purged = self.store.purge(self.retention, groups=self.groups)
        if purged:
            log.info("purged %d finished outbox records", purged)

    def _waiter(self) -> tuple[Wait, Callable[[], None]]:
        """``(wait, close)``: wait(seconds) returns early on stop() or, on PostgreSQL with
        psycopg 3, on a NOTIFY from a committed stage; close() releases the LISTEN connection.
        """

        def sleep(seconds: float) -> None:
            self._stop.wait(seconds)

        if self.store.dialect != "postgresql":
            return sleep, lambda: None
        raw: Any = self.store.engine.raw_connection()
        driver = getattr(raw, "driver_connection", None)
        if driver is None or not hasattr(driver, "notifies"):
            raw.close()
            return sleep, lambda: None
        raw.detach()  # this connection LISTENs for the lane's lifetime; keep it out of the pool
        driver.autocommit = True
        driver.execute(f"LISTEN {NOTIFY_CHANNEL}")

        def wait(seconds: float) -> None:
            # Short slices so that stop() is noticed quickly.
            deadline = time.monotonic() + seconds
            while not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                for _ in driver.notifies(timeout=min(left, 0.25), stop_after=1):
                    return

        return wait, driver.close


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


class _Lane:
    """One claim-publish-mark loop with its own publisher."""

    def __init__(self, relay: Relay, number: int) -> None:
        self.relay = relay
        self.number = number
        self._publisher: Publisher | None = None
        #: Whether a claim of the last pass was a full batch (more may be waiting).
        self.full = False

    def publisher(self) -> Publisher:
        if self._publisher is None:
            broker = self.relay.broker
            transactional_id = (
                f"txmq-relay-{self.relay.instance_id}-{self.number}"
                if broker.system == "kafka"
                else None
            )
            self._publisher = broker.publisher(transactional_id=transactional_id)
        return self._publisher

    def drop_publisher(self) -> None:
        if self._publisher is not None:
            try:
                self._publisher.close()
            except Exception:  # closing a broken publisher must not hide the first error
                log.debug("closing publisher failed", exc_info=True)
            self._publisher = None

    def run_once(self) -> int:
        """One batch of each relayed group; set :attr:`full` if any batch was full."""
        sent = 0
        full = False
        try:
            for group in self.relay.groups or self._ready_groups():
                done, batch_full = self._run_once(group)
                sent += done
                full = full or batch_full
        except BaseException:
            self.relay._floor.reset()  # the batch went back to READY, below the floor
            raise
        self.full = full
        return sent

    def _ready_groups(self) -> list[str]:
        store = self.relay.store
        with store.engine.begin() as connection:
            return store.ready_groups(connection)

    def _run_once(self, group: str) -> tuple[int, bool]:
        """Sent records of one batch of ``group``, and whether its claim was a full batch."""
        relay, store = self.relay, self.relay.store
        started = time.perf_counter()
        with store.engine.begin() as connection:
            after = relay._floor.next(group)
            claimed = store.claim_ready(connection, relay.batch_size, group=group, after=after)
            if not claimed and after:
                # Nothing above the floor: look from the start before calling it empty.
                claimed = store.claim_ready(connection, relay.batch_size, group=group)
            full = len(claimed) == relay.batch_size
            relay._floor.claimed(group, claimed, full_batch=full)
            if not claimed:
                return 0, False
            # A record staged under a larger limit than this broker's would fail every batch
            # it is in (publish raises MessageTooLarge): it fails alone, like a refused one.
            records, too_large = _split_too_large(claimed, relay.broker.max_body_bytes)
            outcomes: list[PublishOutcome] = []
            if records:
                try:
                    outcomes = self.publisher().publish([r.message for r in records])
                except BrokerError:
                    self.drop_publisher()
                    raise
            sent = [r.seq for r, o in zip(records, outcomes, strict=True) if o.ok]
            store.mark_sent(connection, sent, keep=relay.retention > timedelta(0))
            failed = [(r, o.error) for r, o in zip(records, outcomes, strict=True) if not o.ok]
            for record, error in failed + too_large:
                delay = min(relay.max_backoff, 0.5 * 2 ** min(record.publish_attempts, 10))
                store.mark_failed(
                    connection,
                    record.seq,
                    f"{type(error).__name__}: {error}",
                    utcnow() + timedelta(seconds=delay),
                )
                log.warning("publish of %s failed: %s", record.message.id, error)
        system = relay.broker.system
        RELAY_PUBLISHED.labels(system).inc(len(sent))
        if failed or too_large:
            RELAY_FAILURES.labels(system).inc(len(failed) + len(too_large))
        RELAY_BATCH_SECONDS.labels(system).observe(time.perf_counter() - started)
        return len(sent), full


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
