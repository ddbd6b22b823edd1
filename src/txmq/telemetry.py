"""Metrics, optional; tracing is :mod:`txmq.tracing`.

* Prometheus (``pip install 'txmq[prometheus]'``): counters and histograms on the default
  registry, named ``txmq_*`` in base units. Without prometheus-client they are no-ops.
"""

from __future__ import annotations

from typing import Protocol


class Metric(Protocol):
    def labels(self, *values: str) -> Metric: ...
    def inc(self, amount: float = 1) -> None: ...
    def observe(self, amount: float) -> None: ...


class _NoMetric:
    def labels(self, *values: str) -> _NoMetric:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


def _metric(kind: str, name: str, documentation: str, labels: list[str]) -> Metric:
    try:
        import prometheus_client
    except ImportError:
        return _NoMetric()
    factory = getattr(prometheus_client, kind)
    metric: Metric = factory(name, documentation, labels)
    return metric


RELAY_PUBLISHED = _metric(
    "Counter", "txmq_relay_published", "Outbox records published and marked SENT.", ["system"]
)
RELAY_FAILURES = _metric(
    "Counter",
    "txmq_relay_publish_failures",
    "Outbox records the broker did not confirm (retried with backoff).",
    ["system"],
)
RELAY_FAILED = _metric(
    "Counter",
    "txmq_relay_failed",
    "Outbox records the broker refused for good, moved to FAILED.",
    ["system"],
)
RELAY_BATCH_SECONDS = _metric(
    "Histogram",
    "txmq_relay_batch_duration_seconds",
    "Claim, publish, confirm and mark of one relay batch.",
    ["system"],
)
CHECK_BACKS = _metric(
    "Counter",
    "txmq_checkback",
    "Check-backs of PREPARED half messages, by outcome.",
    ["group", "outcome"],
)
STAGED = _metric(
    "Counter", "txmq_outbox_staged", "Messages written to the outbox, by mode.", ["group", "mode"]
)
CONSUMED = _metric(
    "Counter",
    "txmq_consumed",
    "Messages settled by consumers, by outcome (applied, duplicate, retried, dead).",
    ["group", "outcome"],
)
CONSUME_SECONDS = _metric(
    "Histogram",
    "txmq_consume_duration_seconds",
    "Time spent in the handler, per message.",
    ["group"],
)
