"""Metrics and tracing, both optional.

* Prometheus (``pip install 'txmq[prometheus]'``): counters and histograms on the default
  registry, named ``txmq_*`` in base units. Without prometheus-client they are no-ops.
* OpenTelemetry (``pip install 'txmq[otel]'``): the W3C ``traceparent`` of the current span is
  written into a message's headers when it is staged or sent, and consumers continue that
  trace; spans follow the messaging semantic conventions (``messaging.system``,
  ``messaging.destination.name``, ``messaging.message.id``, ``messaging.consumer.group.name``).
  Without opentelemetry-api nothing is traced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from txmq.message import Message


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


def _otel() -> Any:
    """The ``opentelemetry`` API modules, or None when it is not installed (looked up once)."""
    global _OTEL  # noqa: PLW0603 - a one-time import cache
    if _OTEL is _UNSET:
        try:
            from opentelemetry import propagate, trace

            _OTEL = (propagate, trace, trace.get_tracer("txmq"))
        except ImportError:
            _OTEL = None
    return _OTEL


_UNSET: Any = object()
_OTEL: Any = _UNSET


def with_trace_context(message: Message) -> Message:
    """``message`` with the current span's ``traceparent`` (and ``tracestate``) in its headers.

    Returns ``message`` itself when there is no active span or no OpenTelemetry.
    """
    otel = _otel()
    if otel is None:
        return message
    carrier: dict[str, str] = {}
    otel[0].inject(carrier)
    if not carrier or carrier.items() <= message.headers.items():
        return message
    return message.with_headers(**carrier)


@contextlib.contextmanager
def consume_span(message: Message, *, group: str, system: str) -> Iterator[None]:
    """A CONSUMER span for processing ``message``, child of the producer's trace."""
    otel = _otel()
    if otel is None:
        yield
        return
    propagate, trace, tracer = otel
    context = propagate.extract(message.headers) if "traceparent" in message.headers else None
    attributes: Mapping[str, Any] = {
        "messaging.system": system,
        "messaging.operation.type": "process",
        "messaging.destination.name": message.topic,
        "messaging.message.id": message.id,
        "messaging.consumer.group.name": group,
    }
    with tracer.start_as_current_span(
        f"process {message.topic}",
        context=context,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
    ):
        yield
