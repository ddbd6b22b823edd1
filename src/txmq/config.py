"""Broker URLs -> settings.

Accepted forms::

    rabbitmq://user:pass@host:5672/vhost?exchange=txmq&queue_type=quorum
    amqp://user:pass@host:5672/%2F            (same as rabbitmq://)
    amqps://user:pass@host:5671/vhost         (TLS)
    kafka://h1:9092,h2:9092?security.protocol=SASL_SSL&sasl.username=u&sasl.password=p
    memory://name?retry_mode=consume          (in-process broker for tests)

``TXMQ_BROKER_URL`` is used when no URL is given. Settings never show a secret in their
``repr`` or in :meth:`redacted_url`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from txmq.errors import ConfigurationError, InvalidURL
from txmq.message import DEFAULT_MAX_BODY_BYTES, validate_name

ENV_BROKER_URL = "TXMQ_BROKER_URL"
ENV_DATABASE_URL = "TXMQ_DATABASE_URL"

RABBITMQ_SCHEMES = frozenset({"rabbitmq", "amqp", "amqps", "rabbitmqs"})
KAFKA_SCHEMES = frozenset({"kafka"})
MEMORY_SCHEMES = frozenset({"memory"})
_MEMORY_NAME = re.compile(r"[A-Za-z0-9._-]*")

#: Query options whose values are secrets and must never be printed.
SECRET_OPTIONS = frozenset(
    {"sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"}
)
_REDACTED = "***"
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@]*:)[^@/?#]*@")


def redact(text: str) -> str:
    """Replace every URL password and secret query option in ``text`` by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{_REDACTED}@", text)
    for option in SECRET_OPTIONS:
        text = re.sub(rf"({re.escape(option)}=)[^&\s]*", rf"\g<1>{_REDACTED}", text)
    return text


@dataclass(frozen=True, slots=True)
class CommonSettings:
    """Settings every adapter understands (query options without a broker prefix).

    Attributes:
        connect_timeout: seconds to wait for a connection before :class:`BrokerUnavailable`.
        publish_timeout: seconds to wait for the broker to confirm a publish batch.
        max_body_bytes: largest message (body + headers) accepted for publishing.
    """

    connect_timeout: float = 5.0
    publish_timeout: float = 30.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


@dataclass(frozen=True, slots=True, repr=False)
class RabbitMQSettings:
    """Where and how to reach RabbitMQ. Built by :func:`parse_broker_url`."""

    host: str
    port: int
    virtual_host: str = "/"
    username: str = "guest"
    password: str = field(default="guest")
    tls: bool = False
    exchange: str = "txmq"
    queue_type: Literal["classic", "quorum"] = "classic"
    heartbeat: int = 60
    #: ``hold``: the exchange's alternate exchange keeps a message no queue is bound for in
    #: the ``<exchange>.unroutable`` queue (confirmed, like Kafka keeping it in its topic);
    #: ``return``: such a publish fails (NO_ROUTE), for an exchange declared without one.
    unroutable: Literal["hold", "return"] = "hold"
    common: CommonSettings = field(default_factory=CommonSettings)

    system: Literal["rabbitmq"] = "rabbitmq"

    def redacted_url(self) -> str:
        scheme = "amqps" if self.tls else "rabbitmq"
        vhost = quote(self.virtual_host, safe="")
        return f"{scheme}://{self.username}:{_REDACTED}@{self.host}:{self.port}/{vhost}"

    def __repr__(self) -> str:
        return f"RabbitMQSettings({self.redacted_url()!r})"


@dataclass(frozen=True, slots=True, repr=False)
class KafkaSettings:
    """Where and how to reach Kafka. Built by :func:`parse_broker_url`.

    ``options`` are passed to librdkafka as they are (``security.protocol``,
    ``sasl.mechanism``, ...); secrets among them are never printed.
    """

    bootstrap_servers: tuple[str, ...]
    options: Mapping[str, str] = field(default_factory=dict)
    partitions: int = 3
    replication_factor: int = 1
    common: CommonSettings = field(default_factory=CommonSettings)

    system: Literal["kafka"] = "kafka"

    def redacted_url(self) -> str:
        query = "&".join(
            f"{k}={_REDACTED if k in SECRET_OPTIONS else v}"
            for k, v in sorted(self.options.items())
        )
        return f"kafka://{','.join(self.bootstrap_servers)}" + (f"?{query}" if query else "")

    def __repr__(self) -> str:
        return f"KafkaSettings({self.redacted_url()!r})"


@dataclass(frozen=True, slots=True)
class MemorySettings:
    """Which in-process broker (:class:`txmq.testing.fakes.InMemoryBroker`) to use.

    Every adapter connected with the same ``name`` in one process shares one broker;
    ``memory://`` is the broker named ``""``. Built by :func:`parse_broker_url`.
    """

    name: str = ""
    retry_mode: Literal["ttl", "consume"] = "ttl"
    unroutable: Literal["hold", "return"] = "hold"
    common: CommonSettings = field(default_factory=CommonSettings)

    system: Literal["memory"] = "memory"

    def redacted_url(self) -> str:
        return f"memory://{self.name}"


BrokerSettings = RabbitMQSettings | KafkaSettings | MemorySettings


def _pop_common(query: dict[str, str], url: str) -> CommonSettings:
    try:
        return CommonSettings(
            connect_timeout=float(query.pop("connect_timeout", 5.0)),
            publish_timeout=float(query.pop("publish_timeout", 30.0)),
            max_body_bytes=int(query.pop("max_body_bytes", DEFAULT_MAX_BODY_BYTES)),
        )
    except ValueError as exc:
        raise InvalidURL(f"bad number in broker URL {redact(url)}: {exc}") from None


def _host_port(netloc_part: str, default_port: int, url: str) -> tuple[str, int]:
    host, _, port_text = (
        netloc_part.rpartition(":") if ":" in netloc_part else (netloc_part, "", "")
    )
    if not host:
        raise InvalidURL(f"missing host in broker URL {redact(url)}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidURL(f"bad port {port_text!r} in broker URL {redact(url)}")
    return host, int(port_text)


def _parse_rabbitmq(url: str, scheme: str) -> RabbitMQSettings:
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise InvalidURL(f"malformed broker URL {redact(url)}: {exc}") from None
    if not host:
        raise InvalidURL(f"missing host in broker URL {redact(url)}")
    tls = scheme in {"amqps", "rabbitmqs"}
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    common = _pop_common(query, url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    exchange = query.pop("exchange", "txmq")
    queue_type = query.pop("queue_type", "classic")
    heartbeat = query.pop("heartbeat", "60")
    unroutable = query.pop("unroutable", "hold")
    if unroutable not in ("hold", "return"):
        raise InvalidURL(f"unroutable must be hold or return, not {unroutable!r}")
    if query:
        raise InvalidURL(f"unknown option(s) {sorted(query)} in broker URL {redact(url)}")
    if queue_type not in ("classic", "quorum"):
        raise InvalidURL(f"queue_type must be classic or quorum, not {queue_type!r}")
    if not heartbeat.isdigit():
        raise InvalidURL(f"heartbeat must be a whole number of seconds, not {heartbeat!r}")
    try:
        validate_name(exchange, "exchange")
    except ValueError as exc:
        raise InvalidURL(str(exc)) from None
    return RabbitMQSettings(
        host=host,
        port=port or (5671 if tls else 5672),
        virtual_host=vhost,
        username=unquote(parts.username) if parts.username else "guest",
        password=unquote(parts.password) if parts.password else "guest",
        tls=tls,
        exchange=exchange,
        queue_type=queue_type,  # type: ignore[arg-type]  # checked above
        heartbeat=int(heartbeat),
        unroutable=unroutable,  # type: ignore[arg-type]  # checked above
        common=common,
    )


def _parse_kafka(url: str) -> KafkaSettings:
    rest = url.split("://", 1)[1]
    netloc, _, query_text = rest.partition("?")
    netloc = netloc.rstrip("/")
    if "@" in netloc:
        raise InvalidURL(
            "put Kafka credentials in options (sasl.username / sasl.password), "
            f"not before the host: {redact(url)}"
        )
    if not netloc:
        raise InvalidURL(f"missing bootstrap servers in broker URL {redact(url)}")
    servers = tuple(
        "{}:{}".format(*_host_port(part.strip(), 9092, url)) for part in netloc.split(",")
    )
    query = dict(parse_qsl(query_text, keep_blank_values=True))
    common = _pop_common(query, url)
    try:
        partitions = int(query.pop("partitions", 3))
        replication_factor = int(query.pop("replication_factor", 1))
    except ValueError as exc:
        raise InvalidURL(f"bad number in broker URL {redact(url)}: {exc}") from None
    if partitions < 1 or replication_factor < 1:
        raise InvalidURL("partitions and replication_factor must be at least 1")
    return KafkaSettings(
        bootstrap_servers=servers,
        options=MappingProxyType(query),
        partitions=partitions,
        replication_factor=replication_factor,
        common=common,
    )


def _parse_memory(url: str) -> MemorySettings:
    rest = url.split("://", 1)[1]
    name, _, query_text = rest.partition("?")
    name = name.rstrip("/")
    if not _MEMORY_NAME.fullmatch(name):
        raise InvalidURL(
            f"a memory broker's name has only letters, digits, '.', '_' and '-': {redact(url)}"
        )
    query = dict(parse_qsl(query_text, keep_blank_values=True))
    common = _pop_common(query, url)
    retry_mode = query.pop("retry_mode", "ttl")
    unroutable = query.pop("unroutable", "hold")
    if query:
        raise InvalidURL(f"unknown option(s) {sorted(query)} in broker URL {redact(url)}")
    if retry_mode not in ("ttl", "consume"):
        raise InvalidURL(f"retry_mode must be ttl or consume, not {retry_mode!r}")
    if unroutable not in ("hold", "return"):
        raise InvalidURL(f"unroutable must be hold or return, not {unroutable!r}")
    return MemorySettings(
        name=name,
        retry_mode=retry_mode,  # type: ignore[arg-type]  # checked above
        unroutable=unroutable,  # type: ignore[arg-type]  # checked above
        common=common,
    )


def parse_broker_url(url: str | None = None) -> BrokerSettings:
    """Parse a broker URL (or ``$TXMQ_BROKER_URL``) into settings.

    Raises:
        InvalidURL: unknown scheme, missing host, bad port or option; the URL in the
            message is redacted.
        ConfigurationError: no URL given and ``TXMQ_BROKER_URL`` unset.

    Example:
        >>> parse_broker_url("kafka://127.0.0.1:9092").bootstrap_servers
        ('127.0.0.1:9092',)
    """
    if url is None:
        url = os.environ.get(ENV_BROKER_URL)
        if not url:
            raise ConfigurationError(f"no broker URL given and {ENV_BROKER_URL} is not set")
    if not isinstance(url, str):
        raise InvalidURL(f"broker URL must be a str, not {type(url).__name__}")
    url = url.strip()
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise InvalidURL(
            f"broker URL needs a scheme (rabbitmq://, amqp://, kafka://, memory://): {redact(url)}"
        )
    scheme = scheme.lower()
    if scheme in RABBITMQ_SCHEMES:
        return _parse_rabbitmq(url, scheme)
    if scheme in KAFKA_SCHEMES:
        return _parse_kafka(url)
    if scheme in MEMORY_SCHEMES:
        return _parse_memory(url)
    known = ", ".join(sorted(RABBITMQ_SCHEMES | KAFKA_SCHEMES | MEMORY_SCHEMES))
    raise InvalidURL(f"unknown broker URL scheme {scheme!r} (known: {known}): {redact(url)}")


def database_url(url: str | None = None) -> str:
    """Return ``url`` or ``$TXMQ_DATABASE_URL``; raise :class:`ConfigurationError` if neither."""
    url = url or os.environ.get(ENV_DATABASE_URL)
    if not url:
        raise ConfigurationError(f"no database URL given and {ENV_DATABASE_URL} is not set")
    return url


__all__ = [
    "ENV_BROKER_URL",
    "ENV_DATABASE_URL",
    "BrokerSettings",
    "CommonSettings",
    "ConfigurationError",
    "KafkaSettings",
    "MemorySettings",
    "RabbitMQSettings",
    "database_url",
    "parse_broker_url",
    "redact",
]
