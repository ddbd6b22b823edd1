"""Connecting to RabbitMQ with pika, and turning pika's errors into txmq's.

Every connection txmq opens uses one attempt and the deployment's connect timeout for the
TCP connect, the TLS and AMQP handshakes, socket reads and a broker-blocked connection, so a
dead broker fails fast instead of hanging a relay or consumer.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

from txmq.adapters.rabbitmq.settings import RabbitMQSettings
from txmq.config import redact
from txmq.errors import BrokerUnavailable, MissingDependency, TopologyError

try:
    import pika
    import pika.exceptions
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise MissingDependency(
        "the RabbitMQ adapter needs pika: pip install 'txmq[rabbitmq]'"
    ) from exc

#: AMQP reply codes carried by a channel closed by the broker.
NOT_FOUND = 404
PRECONDITION_FAILED = 406


def connection_parameters(settings: RabbitMQSettings, *, name: str, node: int = 0) -> Any:
    """pika ``ConnectionParameters`` for node ``node`` of ``settings.nodes`` (counted
    round, so any number picks one); ``name`` shows in the management UI."""
    host, port = settings.nodes[node % len(settings.nodes)]
    timeout = settings.common.connect_timeout
    ssl_options = None
    if settings.tls:
        # Default context: certificate and host name are verified.
        ssl_options = pika.SSLOptions(ssl.create_default_context(), server_hostname=host)
    return pika.ConnectionParameters(
        host=host,
        port=port,
        virtual_host=settings.virtual_host,
        credentials=pika.PlainCredentials(settings.username, settings.password),
        ssl_options=ssl_options,
        heartbeat=settings.heartbeat,
        connection_attempts=1,
        socket_timeout=timeout,
        stack_timeout=timeout,
        blocked_connection_timeout=timeout,
        client_properties={"connection_name": name},
    )


def describe(settings: RabbitMQSettings, exc: BaseException) -> str:
    """``exc`` as text safe to show: URL passwords and the configured password removed."""
    # pika's connection errors often have an empty str() and say everything in repr().
    text = f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
    text = redact(text)
    if settings.password:
        text = text.replace(settings.password, "***")
    return text


def unavailable(settings: RabbitMQSettings, exc: BaseException, doing: str) -> BrokerUnavailable:
    """The :class:`BrokerUnavailable` to raise (``from exc``) when ``doing`` failed."""
    return BrokerUnavailable(
        f"RabbitMQ at {settings.redacted_url()} failed while {doing}: {describe(settings, exc)}"
    )


def reply_code(exc: BaseException) -> int | None:
    """The AMQP reply code of a channel the broker closed, else ``None``."""
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        return int(exc.reply_code)
    return None


def channel_error(
    settings: RabbitMQSettings, exc: BaseException, doing: str
) -> TopologyError | BrokerUnavailable:
    """The error for an operation the broker refused on a channel (missing or conflicting
    queue -> :class:`TopologyError`), or for a lost connection."""
    if reply_code(exc) in (NOT_FOUND, PRECONDITION_FAILED):
        return TopologyError(f"RabbitMQ refused {doing}: {describe(settings, exc)}")
    return unavailable(settings, exc, doing)


def open_blocking(settings: RabbitMQSettings, *, name: str) -> Any:
    """A connected ``pika.BlockingConnection`` to the first of ``settings.nodes`` that
    answers (pika tries them in order).

    Raises:
        BrokerUnavailable: refused, timed out, authentication failed, on every node (URL
            redacted).
    """
    every_node = [
        connection_parameters(settings, name=name, node=node) for node in range(len(settings.nodes))
    ]
    try:
        return pika.BlockingConnection(every_node)
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise unavailable(settings, exc, "connecting") from exc


def close_quietly(connection: Any) -> None:
    """Close a pika connection that may already be closed or broken."""
    with contextlib.suppress(pika.exceptions.AMQPError, OSError):
        if connection.is_open:
            connection.close()


__all__ = [
    "NOT_FOUND",
    "PRECONDITION_FAILED",
    "channel_error",
    "close_quietly",
    "connection_parameters",
    "describe",
    "open_blocking",
    "pika",
    "reply_code",
    "unavailable",
]
