"""The relay: READY records -> broker -> SENT.

Each pass claims a batch of READY records (``FOR UPDATE SKIP LOCKED``), publishes it, waits
for the broker's confirmation (RabbitMQ publisher confirms; one Kafka transaction per batch)
and marks the confirmed records SENT in the same database transaction that holds their locks.
Any number of relays may run; a crash between the broker's confirmation and the database
commit republishes those records with the same message ids (at-least-once).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from txmq.adapters.base import Adapter, Publisher
from txmq.errors import BrokerError
from txmq.outbox.store import OutboxStore, utcnow
from txmq.outbox.tables import NOTIFY_CHANNEL
from txmq.telemetry import RELAY_BATCH_SECONDS, RELAY_FAILURES, RELAY_PUBLISHED

log = logging.getLogger("txmq.relay")


class Relay:
    """Publishes READY outbox records.

    Args:
        broker: the adapter to publish with.
        store: the outbox store (engine + tables).
        batch_size: records per claim (one Kafka transaction, one confirm wait).
        poll_interval: longest wait between passes when idle (PostgreSQL wakes it earlier
            through LISTEN/NOTIFY).
        retention: SENT and ROLLED_BACK records older than this are purged.
        instance_id: stable name of this relay; on Kafka it makes the ``transactional.id``,
            so a restarted relay fences its previous incarnation.
    """

    def __init__(
        self,
        broker: Adapter,
        store: OutboxStore,
        *,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        retention: timedelta = timedelta(days=1),
        purge_interval: float = 60.0,
        instance_id: str | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.broker = broker
        self.store = store
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retention = retention
        self.purge_interval = purge_interval
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self.max_backoff = max_backoff
        self._publisher: Publisher | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_purge = 0.0

    # -- one pass --------------------------------------------------------------------------

    def _get_publisher(self) -> Publisher:
        if self._publisher is None:
            transactional_id = (
                f"txmq-relay-{self.instance_id}" if self.broker.system == "kafka" else None
            )
            self._publisher = self.broker.publisher(transactional_id=transactional_id)
        return self._publisher

    def _drop_publisher(self) -> None:
        if self._publisher is not None:
            try:
                self._publisher.close()
            except Exception:  # closing a broken publisher must not hide the first error
                log.debug("closing publisher failed", exc_info=True)
            self._publisher = None

    def run_once(self) -> int:
        """Claim, publish and mark one batch; return how many records were marked SENT.

        Raises:
            BrokerError: the broker is unreachable; nothing was marked, the claim is released.
        """
        started = time.perf_counter()
        with self.store.engine.begin() as connection:
            records = self.store.claim_ready(connection, self.batch_size)
            if not records:
                return 0
            try:
                outcomes = self._get_publisher().publish([r.message for r in records])
            except BrokerError:
                self._drop_publisher()
                raise
            sent = [r.seq for r, o in zip(records, outcomes, strict=True) if o.ok]
            self.store.mark_sent(connection, sent)
            for record, outcome in zip(records, outcomes, strict=True):
                if not outcome.ok:
                    delay = min(self.max_backoff, 0.5 * 2 ** min(record.publish_attempts, 10))
                    self.store.mark_failed(
                        connection,
                        record.seq,
                        f"{type(outcome.error).__name__}: {outcome.error}",
                        utcnow() + timedelta(seconds=delay),
                    )
                    log.warning("publish of %s failed: %s", record.message.id, outcome.error)
        system = self.broker.system
        RELAY_PUBLISHED.labels(system).inc(len(sent))
        if len(sent) < len(records):
            RELAY_FAILURES.labels(system).inc(len(records) - len(sent))
        RELAY_BATCH_SECONDS.labels(system).observe(time.perf_counter() - started)
        return len(sent)

    def drain(self, timeout: float = 60.0) -> int:
        """Run passes until no READY record is due (or ``timeout``); return how many were sent."""
        deadline = time.monotonic() + timeout
        total = 0
        while time.monotonic() < deadline:
            sent = self.run_once()
            total += sent
            if sent == 0:
                break
        return total

    # -- background loop -------------------------------------------------------------------

    def start(self) -> Relay:
        """Run the relay in a daemon thread until :meth:`stop`."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name="txmq-relay", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the current batch and stop; close the publisher."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._drop_publisher()

    def run(self) -> None:
        """Loop until :meth:`stop`: publish, back off on broker errors, wait for work."""
        wait, close_waiter = self._waiter()
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    sent = self.run_once()
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
                if sent < self.batch_size:
                    wait(self.poll_interval)
        finally:
            close_waiter()
            self._drop_publisher()

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge >= self.purge_interval:
            self._last_purge = now
            purged = self.store.purge(self.retention)
            if purged:
                log.info("purged %d finished outbox records", purged)

    def _waiter(self) -> tuple[Callable[[float], None], Callable[[], None]]:
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
        raw.detach()  # this connection LISTENs for the relay's lifetime; keep it out of the pool
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
