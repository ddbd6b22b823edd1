"""Counters of what a consumer did, readable while it runs."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields

from txmq.telemetry import CONSUMED, CONSUMED_OUTCOMES, CONSUMER_EVENTS, Metric


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """Counts since the consumer was created.

    Attributes:
        processed: handler transactions committed (one per message).
        duplicates: deliveries acknowledged without running the handler (inbox hit).
        retried: failed attempts sent to a retry stage.
        dead_lettered: messages sent to the DLQ (including undecodable ones).
        compensations: compensation events sent.
        held: retry deliveries given back because they were not due yet (Kafka).
        batch_fallbacks: batches whose transaction failed and were redone one by one.
        skipped: DLQ replays addressed to another group, acknowledged untouched (Kafka).
    """

    processed: int = 0
    duplicates: int = 0
    retried: int = 0
    dead_lettered: int = 0
    compensations: int = 0
    held: int = 0
    batch_fallbacks: int = 0
    skipped: int = 0


@dataclass(slots=True)
class ConsumerStats:
    """Thread-safe counters; :meth:`snapshot` reads them consistently.

    With prometheus-client installed, every count is also exported: how deliveries were
    settled (``processed``, ``duplicates``, ``retried``, ``dead_lettered``, ``skipped``) as
    ``txmq_consumed_total{group, outcome}``, the others (``compensations``, ``held``,
    ``batch_fallbacks``) as ``txmq_consumer_events_total{group, event}``.
    """

    group: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counts: dict[str, int] = field(
        default_factory=lambda: {f.name: 0 for f in fields(StatsSnapshot)}
    )
    #: The metric child per count, looked up once (a labels() lookup takes a lock of its own).
    _metrics: dict[str, Metric] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n
            metric = self._metrics.get(name)
            if metric is None:
                family = CONSUMED if name in CONSUMED_OUTCOMES else CONSUMER_EVENTS
                metric = self._metrics[name] = family.labels(self.group, name)
        if n:
            metric.inc(n)

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(**self._counts)
