"""The one place a broker is registered: its URL schemes, its settings parser, its adapter.

Both the parser and the adapter are named as ``"module:attribute"`` and imported only when
a URL of that broker is used, so ``pip install 'txmq[kafka]'`` users never need pika, and
parsing a URL needs no driver at all. A third broker is one more :class:`Broker` here (or
:func:`register` from outside), and passes the suites of :mod:`txmq.testing.contract`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from txmq.config import ENV_BROKER_URL, BrokerSettings, redact
from txmq.errors import ConfigurationError, InvalidURL

if TYPE_CHECKING:
    from txmq.adapters.base import Adapter


@dataclass(frozen=True, slots=True)
class Broker:
    """One kind of broker txmq can use.

    Attributes:
        system: the name its settings carry in ``system`` (and OpenTelemetry's
            ``messaging.system``).
        schemes: the URL schemes that choose it (lower case).
        parser: ``"module:function"``, ``function(url, scheme) -> settings``; must not
            import the broker's driver.
        adapter: ``"module:factory"``, ``factory(settings) -> Adapter``.
    """

    system: str
    schemes: frozenset[str]
    parser: str
    adapter: str


_BROKERS: dict[str, Broker] = {}


def register(broker: Broker) -> None:
    """Make ``broker``'s schemes usable in :func:`txmq.connect` URLs.

    Raises:
        ValueError: one of its schemes belongs to another registered broker.
    """
    for other in _BROKERS.values():
        taken = broker.schemes & other.schemes
        if other.system != broker.system and taken:
            raise ValueError(f"scheme(s) {sorted(taken)} already belong to {other.system}")
    _BROKERS[broker.system] = broker


for _builtin in (
    Broker(
        "rabbitmq",
        frozenset({"rabbitmq", "amqp", "amqps", "rabbitmqs"}),
        "txmq.adapters.rabbitmq.settings:parse_url",
        "txmq.adapters.rabbitmq.adapter:RabbitMQAdapter",
    ),
    Broker(
        "kafka",
        frozenset({"kafka"}),
        "txmq.adapters.kafka.settings:parse_url",
        "txmq.adapters.kafka.adapter:KafkaAdapter",
    ),
    Broker(
        "memory",
        frozenset({"memory"}),
        "txmq.adapters.memory.settings:parse_url",
        "txmq.adapters.memory.adapter:memory_broker",
    ),
):
    register(_builtin)


def _load(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def parse_broker_url(url: str | None = None) -> BrokerSettings:
    """Parse a broker URL (or ``$TXMQ_BROKER_URL``) into its broker's settings.

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
    known = sorted(s for broker in _BROKERS.values() for s in broker.schemes)
    if not sep:
        listed = ", ".join(f"{s}://" for s in known)
        raise InvalidURL(f"broker URL needs a scheme ({listed}): {redact(url)}")
    scheme = scheme.lower()
    for broker in _BROKERS.values():
        if scheme in broker.schemes:
            parser: Callable[[str, str], BrokerSettings] = _load(broker.parser)
            return parser(url, scheme)
    raise InvalidURL(
        f"unknown broker URL scheme {scheme!r} (known: {', '.join(known)}): {redact(url)}"
    )


def adapter_for(settings: BrokerSettings) -> Adapter:
    """Build the adapter for ``settings``.

    Raises:
        MissingDependency: the broker's driver is not installed.
        ConfigurationError: no broker is registered for ``settings.system``.
    """
    broker = _BROKERS.get(settings.system)
    if broker is None:
        raise ConfigurationError(f"no broker registered as {settings.system!r}")
    factory: Callable[[BrokerSettings], Adapter] = _load(broker.adapter)
    return factory(settings)


def systems() -> list[str]:
    """The registered brokers' names."""
    return list(_BROKERS)


__all__ = ["Broker", "adapter_for", "parse_broker_url", "register", "systems"]
