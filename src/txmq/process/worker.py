"""``txmq worker``: relay, check-back and purge of some producer groups, as one process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from txmq.adapters import Adapter
from txmq.message import validate_name
from txmq.metrics import OutboxSampler
from txmq.outbox.checkback import CheckBack, CheckBackPolicy
from txmq.outbox.relay import Relay
from txmq.outbox.store import OutboxStore
from txmq.process.probes import Check
from txmq.supervision import Health, SupervisedLoop, health_of

log = logging.getLogger("txmq.worker")

#: How long a check-back loop waits when no check-back was due.
CHECK_BACK_EVERY = 1.0
#: How often the outbox gauges (records per state, oldest READY/PREPARED age) are sampled.
SAMPLE_EVERY = 15.0


class OutboxWorker:
    """A relay of ``groups`` plus one check-back loop per group (checker-less: records
    staged with ``send_in_local_transaction`` answer by their marker, the others count
    UNKNOWN until the policy's limit parks them). The relay purges finished records older
    than ``retention``.

    Args:
        adapter: the broker to publish to (closed by :meth:`stop`).
        store: the outbox.
        groups: the producer groups served.
        lanes, batch_size, retention, instance_id: see :class:`~txmq.Relay`.
        check_policy: when and how often PREPARED records are checked.

    Raises:
        InvalidMessage: a group name is not valid.
    """

    def __init__(
        self,
        *,
        adapter: Adapter,
        store: OutboxStore,
        groups: Sequence[str],
        lanes: int = 2,
        batch_size: int = 1000,
        retention: timedelta = timedelta(days=1),
        instance_id: str | None = None,
        check_policy: CheckBackPolicy | None = None,
    ) -> None:
        self.adapter = adapter
        self.store = store
        self.groups = tuple(dict.fromkeys(validate_name(g, "producer group") for g in groups))
        options: dict[str, Any] = {
            "concurrency": lanes,
            "batch_size": batch_size,
            "retention": retention,
            "instance_id": instance_id,
        }
        self.relay = Relay(adapter, store, groups=self.groups, **options)
        policy = check_policy or CheckBackPolicy()
        self._checkbacks = [CheckBack(store, group, None, policy) for group in self.groups]
        self._stop = threading.Event()
        self._loops: list[SupervisedLoop] = []

    def start(self) -> None:
        """Check the schema and the broker, then start the relay and check-back loops.

        Raises:
            SchemaMissing, DatabaseRefused: see :meth:`OutboxStore.check_schema`.
            BrokerUnavailable: the broker cannot be reached or refused the credentials.
        """
        self.store.check_schema()
        self.adapter.ping()
        self._stop.clear()
        self._loops = [self._supervised(checkback) for checkback in self._checkbacks]
        self._loops.append(self._sampling())
        for loop in self._loops:
            loop.start()
        self.relay.start()
        log.info(
            "worker %s: relay and check-back of %s -> %s",
            *(self.relay.instance_id, ", ".join(self.groups), self.adapter.settings.redacted_url()),
        )

    def _supervised(self, checkback: CheckBack) -> SupervisedLoop:
        return SupervisedLoop(
            name=f"txmq-checkback-{checkback.group}",
            step=checkback.loop_step,
            stop=self._stop,
            idle=lambda: self._stop.wait(CHECK_BACK_EVERY),
            on_exit=checkback.lock.release,
        )

    def _sampling(self) -> SupervisedLoop:
        sampler = OutboxSampler(store=self.store, groups=self.groups)

        def sample() -> bool:
            sampler.sample()
            return False  # then wait SAMPLE_EVERY

        return SupervisedLoop(
            name="txmq-outbox-sampler",
            step=sample,
            stop=self._stop,
            idle=lambda: self._stop.wait(SAMPLE_EVERY),
        )

    def stop(self) -> None:
        """Let the relay lanes finish their batch and the check-backs their pass; close."""
        self._stop.set()
        self.relay.stop(timeout=30.0)
        for loop in self._loops:
            loop.join(30.0)
        self.adapter.close()

    def health(self) -> Health:
        return self.relay.health() + health_of(self._loops)

    def readiness_checks(self) -> Sequence[tuple[str, Check]]:
        return [("database", self.store.check_schema), ("broker", self.adapter.ping)]
