"""RabbitMQ broker URLs -> :class:`RabbitMQSettings` (no pika needed to parse them).

Accepted forms::

    rabbitmq://user:pass@host:5672/vhost?exchange=txmq&queue_type=quorum
    amqp://user:pass@host:5672/%2F            (same as rabbitmq://)
    amqps://user:pass@host:5671/vhost         (TLS; rabbitmqs:// too)
    rabbitmq://user:pass@h1:5672,h2:5672,h3:5672/vhost?queue_type=quorum   (a cluster)

With several hosts, every connection tries them in the order given and uses the first that
answers (the nodes of one cluster: same user, virtual host and options).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from txmq.config import REDACTED, CommonSettings, host_port, pop_common, redact
from txmq.errors import InvalidURL
from txmq.message import validate_name

SCHEMES = frozenset({"rabbitmq", "amqp", "amqps", "rabbitmqs"})
_TLS_SCHEMES = frozenset({"amqps", "rabbitmqs"})


@dataclass(frozen=True, slots=True, repr=False)
class RabbitMQSettings:
    """Where and how to reach RabbitMQ. Built by :func:`txmq.parse_broker_url`.

    ``host``/``port`` is the first node to try; ``failover`` the further nodes of the same
    cluster, tried in order when the ones before cannot be reached.
    """

    host: str
    port: int
    failover: tuple[tuple[str, int], ...] = ()
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

    @property
    def nodes(self) -> tuple[tuple[str, int], ...]:
        """Every ``(host, port)`` to try, in order."""
        return ((self.host, self.port), *self.failover)

    def redacted_url(self) -> str:
        scheme = "amqps" if self.tls else "rabbitmq"
        vhost = quote(self.virtual_host, safe="")
        hosts = ",".join(f"{host}:{port}" for host, port in self.nodes)
        return f"{scheme}://{self.username}:{REDACTED}@{hosts}/{vhost}"

    def __repr__(self) -> str:
        return f"RabbitMQSettings({self.redacted_url()!r})"


def parse_url(url: str, scheme: str) -> RabbitMQSettings:
    """Settings from a ``rabbitmq://`` / ``amqp(s)://`` URL.

    Raises:
        InvalidURL: missing host, bad port or option (the URL in the message is redacted).
    """
    tls = scheme in _TLS_SCHEMES
    first_node_url, failover = _split_failover(url, 5671 if tls else 5672)
    try:
        parts = urlsplit(first_node_url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise InvalidURL(f"malformed broker URL {redact(url)}: {exc}") from None
    if not host:
        raise InvalidURL(f"missing host in broker URL {redact(url)}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    common = pop_common(query, url)
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
        failover=failover,
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


def _split_failover(url: str, default_port: int) -> tuple[str, tuple[tuple[str, int], ...]]:
    """``url`` with only its first host, and the ``(host, port)`` of the hosts after it.

    Raises:
        InvalidURL: an empty host or a bad port among the further hosts.
    """
    head, separator, rest = url.partition("://")
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            end = min(end, found)
    userinfo, at, hosts = rest[:end].rpartition("@")
    first, *others = hosts.split(",")
    failover = tuple(host_port(other.strip(), default_port, url) for other in others)
    return f"{head}{separator}{userinfo}{at}{first}{rest[end:]}", failover
