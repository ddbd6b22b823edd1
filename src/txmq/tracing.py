"""OpenTelemetry spans for txmq's messaging operations (``pip install 'txmq[otel]'``).

One trace per message: the span that stages (or sends) a message is the context the message
carries (W3C ``traceparent`` / ``tracestate`` headers); the consumer's ``process`` span and
the retry, dead-letter and compensation spans are its children. A relay batch serves many
messages, so its ``publish`` span starts a trace of its own and links to each message's.
Attributes follow the OpenTelemetry messaging semantic conventions.

Without opentelemetry-api every helper here is a no-op that costs one function call; with
the API but no SDK (no tracer provider), spans are the API's non-recording ones, which carry
a message's trace context on, and a consumer skips the span of a message that carries none.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from txmq.adapters.base import PublishOutcome
from txmq.config import redact
from txmq.message import Message

#: The SDK's default OTEL_SPAN_LINK_COUNT_LIMIT.
_LINK_LIMIT = 128
#: Length of a version 00 W3C traceparent.
_TRACEPARENT_LENGTH = 55

#: The attribute holding txmq's delivery attempt (1 for a first delivery).
ATTEMPT = "txmq.attempt"

_UNSET: Any = object()
_OTEL: Any = _UNSET


def _otel() -> Any:
    """``(propagate, trace, tracer)``, or None without opentelemetry-api (looked up once)."""
    global _OTEL  # noqa: PLW0603 - a one-time import cache
    if _OTEL is _UNSET:
        try:
            from opentelemetry import propagate, trace

            _OTEL = (propagate, trace, trace.get_tracer("txmq"))
        except ImportError:
            _OTEL = None
    return _OTEL


def _silent(trace: Any, tracer: Any) -> bool:
    """True if ``tracer`` makes only the API's non-recording spans: a ``NoOpTracer``, or
    the API's proxy while no SDK tracer provider is set (one set later is seen at once)."""
    if isinstance(tracer, trace.ProxyTracer):
        # What the proxy delegates to now (the proxy itself, so "not silent", if an API
        # version no longer has the attribute).
        tracer = getattr(tracer, "_tracer", tracer)
    return isinstance(tracer, trace.NoOpTracer)


def untraced(message: Message) -> bool:
    """True if a :func:`message_span` of ``message`` would do nothing: no opentelemetry-api,
    or no SDK tracer provider and no trace context in the message. A consumer then skips
    even building the span's attributes."""
    otel = _otel()
    if otel is None:
        return True
    return "traceparent" not in message.headers and _silent(otel[1], otel[2])


def _unchanged(message: Message) -> Message:
    return message


def _ignore(outcomes: Sequence[PublishOutcome]) -> None:
    pass


def _base(system: str | None, operation_type: str, operation_name: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.operation.type": operation_type,
        "messaging.operation.name": operation_name,
    }
    if system is not None:
        attributes["messaging.system"] = system
    return attributes


def _fail(span: Any, trace: Any, exc: BaseException) -> None:
    """Record ``exc`` on ``span`` with URL passwords and secrets redacted, as in logs."""
    if not span.is_recording():
        return
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    text = redact(str(exc))
    span.record_exception(
        exc,
        attributes={
            "exception.message": text,
            "exception.stacktrace": redact("".join(traceback.format_exception(exc))),
        },
    )
    span.set_attribute("error.type", name)
    span.set_status(trace.Status(trace.StatusCode.ERROR, text))


@contextlib.contextmanager
def creating(
    operation: str, *, group: str, system: str | None
) -> Iterator[Callable[[Message], Message]]:
    """Yield a function that gives a message its own PRODUCER span, named
    ``<operation> <topic>``, and returns it carrying that span's context in its headers.

    The spans are children of the current span and end when the block does (with an error
    status if it raises). Without OpenTelemetry the function returns the message itself.
    """
    otel = _otel()
    if otel is None:
        yield _unchanged
        return
    propagate, trace, tracer = otel
    spans: list[Any] = []

    def traced(message: Message) -> Message:
        attributes = _base(system, "create", operation)
        attributes["messaging.destination.name"] = message.topic
        attributes["messaging.message.id"] = message.id
        attributes["txmq.producer.group"] = group
        span = tracer.start_span(
            f"{operation} {message.topic}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        )
        spans.append(span)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        if not carrier or carrier.items() <= message.headers.items():
            return message
        return message.with_headers(**carrier)

    try:
        yield traced
    except BaseException as exc:
        for span in spans:
            _fail(span, trace, exc)
        raise
    finally:
        for span in spans:
            span.end()


@contextlib.contextmanager
def publishing(
    messages: Sequence[Message], *, system: str, operation: str = "publish"
) -> Iterator[Callable[[Sequence[PublishOutcome]], None]]:
    """A PRODUCER span ``<operation> <topic>`` (``publish``, or ``replay`` for DLQ replay
    copies; the bare operation when the batch has several topics) for one published batch,
    linked to the context each message carries.

    At most ``OTEL_SPAN_LINK_COUNT_LIMIT`` (default 128, the SDK's limit) messages are
    linked; ``txmq.unlinked_count`` says how many more carried a context. Yields a function to
    call with the broker's outcomes: messages it did not confirm give the span an error
    status and ``txmq.unconfirmed_count``. Without a tracer provider (the API alone) the
    messages are not looked at, so the relay pays nothing per message.
    """
    otel = _otel()
    if otel is None:
        yield _ignore
        return
    _, trace, tracer = otel
    attributes = _base(system, "send", operation)
    attributes["messaging.batch.message_count"] = len(messages)
    name = operation
    links: list[Any] = []
    if _records(trace, tracer):
        topics = {message.topic for message in messages}
        if len(topics) == 1:
            (topic,) = topics
            attributes["messaging.destination.name"] = topic
            name = f"{operation} {topic}"
        links, unlinked = _links(trace, messages)
        if unlinked:
            attributes["txmq.unlinked_count"] = unlinked
    span = tracer.start_span(name, kind=trace.SpanKind.PRODUCER, attributes=attributes, links=links)

    def settled(outcomes: Sequence[PublishOutcome]) -> None:
        if not span.is_recording():
            return
        unconfirmed = sum(outcome.error is not None for outcome in outcomes)
        if unconfirmed:
            span.set_attribute("txmq.unconfirmed_count", unconfirmed)
            span.set_status(trace.Status(trace.StatusCode.ERROR, "not confirmed by the broker"))

    try:
        yield settled
    except BaseException as exc:
        _fail(span, trace, exc)
        raise
    finally:
        span.end()


def _records(trace: Any, tracer: Any) -> bool:
    """Whether spans may be recorded: an SDK tracer, or a proxy to a real provider."""
    if not isinstance(tracer, (trace.ProxyTracer, trace.NoOpTracer)):
        return True
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def _links(trace: Any, messages: Sequence[Message]) -> tuple[list[Any], int]:
    """Links to the W3C contexts ``messages`` carry, up to the link limit; and how many
    more there were.

    The header is parsed here (per batch, not through the propagator's regular expressions):
    link attributes and extraction would cost more than publishing the message.
    """
    try:
        limit = int(os.environ.get("OTEL_SPAN_LINK_COUNT_LIMIT", _LINK_LIMIT))
    except ValueError:
        limit = _LINK_LIMIT
    links: list[Any] = []
    unlinked = 0
    for message in messages:
        if len(links) >= limit:
            unlinked += "traceparent" in message.headers
            continue
        context = _carried(trace, message.headers.get("traceparent"))
        if context is not None:
            links.append(trace.Link(context))
    return links, unlinked


def _carried(trace: Any, traceparent: str | None) -> Any:
    """The span context of a W3C ``traceparent`` (``00-<trace>-<span>-<flags>``), or None."""
    if traceparent is None or len(traceparent) != _TRACEPARENT_LENGTH:
        return None
    try:
        version, trace_id, span_id, flags = traceparent.split("-")
        context = trace.SpanContext(
            int(trace_id, 16),
            int(span_id, 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(int(flags, 16)),
        )
    except ValueError:
        return None
    return context if version == "00" and context.is_valid else None


@contextlib.contextmanager
def message_span(
    operation: str,
    message: Message,
    *,
    group: str,
    system: str,
    destination: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """A span, child of the context ``message`` carries, for what a consumer does with it:
    ``process`` (CONSUMER span; ``destination`` defaults to its topic), or ``retry``,
    ``dead_letter`` and ``compensate`` (PRODUCER spans sending a copy to ``destination``).

    The span is current inside the block, and records an exception that leaves it.
    """
    if untraced(message):
        # Without opentelemetry, or without a provider and a context to carry on, the span
        # would be the API's invalid one and the context it made current empty: skipped.
        yield
        return
    propagate, trace, tracer = _otel()
    processing = operation == "process"
    span_attributes = _base(system, "process" if processing else "send", operation)
    span_attributes["messaging.destination.name"] = destination or message.topic
    span_attributes["messaging.message.id"] = message.id
    span_attributes["messaging.consumer.group.name"] = group
    if attributes:
        span_attributes.update(attributes)
    parent = propagate.extract(message.headers) if "traceparent" in message.headers else None
    with tracer.start_as_current_span(
        f"{operation} {destination or message.topic}",
        context=parent,
        kind=trace.SpanKind.CONSUMER if processing else trace.SpanKind.PRODUCER,
        attributes=span_attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except BaseException as exc:
            _fail(span, trace, exc)
            raise


@contextlib.contextmanager
def check_span(message: Message, *, group: str, count: int) -> Iterator[Callable[[str], None]]:
    """An INTERNAL span ``check <topic>``, child of the context the half message carries, for
    one check-back of ``message`` by producer group ``group`` (``count``: its number).

    Yields a function that records the answer (``COMMIT``, ``ROLLBACK``, ``UNKNOWN``, or the
    self-answering marker's) as ``txmq.check.result``. An exception leaving the block is
    recorded on the span.
    """
    otel = _otel()
    if otel is None:
        yield _ignore_result
        return
    propagate, trace, tracer = otel
    parent = propagate.extract(message.headers) if "traceparent" in message.headers else None
    with tracer.start_as_current_span(
        f"check {message.topic}",
        context=parent,
        kind=trace.SpanKind.INTERNAL,
        attributes={
            "messaging.message.id": message.id,
            "messaging.destination.name": message.topic,
            "txmq.producer.group": group,
            "txmq.check.count": count,
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield lambda result: span.set_attribute("txmq.check.result", result)
        except BaseException as exc:
            _fail(span, trace, exc)
            raise


def _ignore_result(result: str) -> None:
    """Where nothing traces, a check-back's answer has nowhere to go."""


@contextlib.contextmanager
def saga_span(
    operation: str, *, saga: str, saga_id: str, traceparent: str | None
) -> Iterator[str | None]:
    """A span of saga ``saga_id`` (named ``saga <operation>``), current inside the block:
    the child of the saga's trace (``traceparent``, the context its first span carried), or
    of the current span when the saga has none yet. Yields the span's own ``traceparent``,
    which :class:`~txmq.saga.Orchestrator` keeps with the saga, so that every step, whichever
    process or thread advances it, is a span of one trace. Without OpenTelemetry it yields
    ``traceparent`` unchanged.
    """
    otel = _otel()
    if otel is None:
        yield traceparent
        return
    propagate, trace, tracer = otel
    parent = propagate.extract({"traceparent": traceparent}) if traceparent else None
    attributes = {"txmq.saga.name": saga, "txmq.saga.id": saga_id}
    with tracer.start_as_current_span(
        f"saga {operation}",
        context=parent,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        try:
            yield carrier.get("traceparent", traceparent)
        except BaseException as exc:
            _fail(span, trace, exc)
            raise
