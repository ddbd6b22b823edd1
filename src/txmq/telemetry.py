"""Metrics, optional; tracing is :mod:`txmq.tracing`.

* Prometheus (``pip install 'txmq[prometheus]'``): counters, histograms and gauges on the
  default registry, named ``txmq_*`` in base units (:data:`METRICS` lists them). The gauges
  are set by the samplers of :mod:`txmq.metrics`. Without prometheus-client they are no-ops.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol


class Metric(Protocol):
    def labels(self, *values: str) -> Metric: ...
    def inc(self, amount: float = 1) -> None: ...
    def observe(self, amount: float) -> None: ...
    def set(self, value: float) -> None: ...


class _NoMetric:
    def labels(self, *values: str) -> _NoMetric:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def set(self, value: float) -> None:
        pass


class _Deferred:
    """A metric created on its first use, so that ``import txmq`` does not load
    prometheus-client (about 60 ms) in programs that never count anything."""

    __slots__ = ("_documentation", "_kind", "_labels", "_metric", "_name", "_options")

    def __init__(
        self, kind: str, name: str, documentation: str, labels: list[str], options: dict[str, Any]
    ) -> None:
        self._kind = kind
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._options = options
        self._metric: Metric | None = None

    def resolve(self) -> Metric:
        metric = self._metric
        if metric is None:
            # Two threads counting for the first time at once must not register it twice.
            with _CREATING:
                metric = self._metric
                if metric is None:
                    metric = self._metric = _create(
                        self._kind, self._name, self._documentation, self._labels, self._options
                    )
        return metric

    def labels(self, *values: str) -> Metric:
        return self.resolve().labels(*values)

    def inc(self, amount: float = 1) -> None:
        self.resolve().inc(amount)

    def observe(self, amount: float) -> None:
        self.resolve().observe(amount)

    def set(self, value: float) -> None:
        self.resolve().set(value)


def _create(
    kind: str, name: str, documentation: str, labels: list[str], options: dict[str, Any]
) -> Metric:
    try:
        import prometheus_client
    except ImportError:
        return _NoMetric()
    factory = getattr(prometheus_client, kind)
    metric: Metric = factory(name, documentation, labels, **options)
    return metric


_CREATING = threading.Lock()
_DEFERRED: list[_Deferred] = []

#: Every metric txmq defines: its name (as defined; a Counter is exposed with ``_total``, a
#: Histogram as ``_bucket``, ``_sum`` and ``_count``), to its kind and label names.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {}


def _metric(kind: str, name: str, documentation: str, labels: list[str], **options: Any) -> Metric:
    METRICS[name] = (kind, tuple(labels))
    deferred = _Deferred(kind, name, documentation, labels, options)
    _DEFERRED.append(deferred)
    return deferred


def register_all() -> None:
    """Create every txmq metric on prometheus-client's default registry now, so that an
    exposition shows each one (with its zero values) before it is first used."""
    for deferred in _DEFERRED:
        deferred.resolve()


RELAY_PUBLISHED = _metric(
    "Counter",
    "txmq_relay_published",
    "Outbox records published and marked SENT.",
    ["system", "group"],
)
RELAY_FAILURES = _metric(
    "Counter",
    "txmq_relay_publish_failures",
    "Outbox records the broker did not confirm (retried with backoff).",
    ["system", "group"],
)
RELAY_FAILED = _metric(
    "Counter",
    "txmq_relay_failed",
    "Outbox records the broker refused for good, moved to FAILED.",
    ["system", "group"],
)
RELAY_BATCH_SECONDS = _metric(
    "Histogram",
    "txmq_relay_batch_duration_seconds",
    "Claim, publish, confirm and mark of one relay batch (batches that claimed nothing are "
    "not observed).",
    ["system", "group"],
)
RELAY_BATCH_SIZE = _metric(
    "Histogram",
    "txmq_relay_batch_size",
    "Records claimed by one relay batch (batches that claimed nothing are not observed).",
    ["system", "group"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
CHECK_BACKS = _metric(
    "Counter",
    "txmq_checkback",
    "Check-backs of PREPARED half messages, by outcome: COMMIT, ROLLBACK or UNKNOWN as the "
    "checker answered, marker-COMMIT or marker-ROLLBACK for self-answering ones.",
    ["group", "outcome"],
)
STAGED = _metric(
    "Counter", "txmq_outbox_staged", "Messages written to the outbox, by mode.", ["group", "mode"]
)
#: The ``outcome`` of ``txmq_consumed_total``: how a delivery was settled (the fields of
#: ``Consumer.stats`` of the same names).
CONSUMED_OUTCOMES = ("processed", "duplicates", "retried", "dead_lettered", "skipped")
#: The ``event`` of ``txmq_consumer_events_total``: what a consumer did besides settling.
CONSUMER_EVENTS_NAMES = ("compensations", "held", "batch_fallbacks")
CONSUMED = _metric(
    "Counter",
    "txmq_consumed",
    "Deliveries settled by consumers, by outcome (processed, duplicates, retried, "
    "dead_lettered, skipped).",
    ["group", "outcome"],
)
CONSUMER_EVENTS = _metric(
    "Counter",
    "txmq_consumer_events",
    "What consumers did besides settling, by event (compensations sent, retry deliveries "
    "held until due, batches redone one by one).",
    ["group", "event"],
)
CONSUME_SECONDS = _metric(
    "Histogram",
    "txmq_consume_duration_seconds",
    "Time spent in the handler, per run, by result (ok, or error when it raised).",
    ["group", "result"],
)
OUTBOX_RECORDS = _metric(
    "Gauge",
    "txmq_outbox_records",
    "Outbox records by producer group and state (sampled).",
    ["group", "state"],
)
OUTBOX_OLDEST_AGE = _metric(
    "Gauge",
    "txmq_outbox_oldest_age_seconds",
    "Age of the oldest READY and of the oldest PREPARED record, since it was staged; 0 when "
    "there is none (sampled).",
    ["group", "state"],
)
DLQ_DEPTH = _metric(
    "Gauge",
    "txmq_dlq_depth",
    "Letters in the dead-letter queue of a group and topic (sampled; absent where the "
    "broker cannot tell).",
    ["group", "topic"],
)
CONSUMER_LAG = _metric(
    "Gauge",
    "txmq_consumer_lag",
    "Messages of a topic a consumer group has yet to take: Kafka, records after its "
    "committed offsets; RabbitMQ, messages ready in its work queue (sampled).",
    ["group", "topic"],
)
READY = _metric(
    "Gauge",
    "txmq_ready",
    "1 while the process's readiness check passes, else 0.",
    ["process"],
)
# -- sagas (txmq.saga) -------------------------------------------------------------------

SAGAS_ENDED = _metric(
    "Counter",
    "txmq_saga_ended",
    "Saga instances that reached COMPLETED, FAILED or PARKED.",
    ["saga", "state"],
)
STEP_DURATION = _metric(
    "Histogram",
    "txmq_saga_step_duration_seconds",
    "From sending a step's command (first attempt) to its reply.",
    ["saga", "step", "op"],
)
COMPENSATIONS = _metric(
    "Counter",
    "txmq_saga_compensations",
    "Compensations that completed (done) or gave up (parked).",
    ["saga", "step", "outcome"],
)
SAGAS = _metric(
    "Gauge",
    "txmq_sagas",
    "Saga instances by saga name and state (sampled).",
    ["saga", "state"],
)
