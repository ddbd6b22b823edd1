"""Kafka broker URLs -> :class:`KafkaSettings` (no confluent-kafka needed to parse them).

Accepted form::

    kafka://h1:9092,h2:9092?security.protocol=SASL_SSL&sasl.username=u&sasl.password=p

Options txmq does not know are passed to librdkafka as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal
from urllib.parse import parse_qsl

from txmq.config import REDACTED, SECRET_OPTIONS, CommonSettings, host_port, pop_common, redact
from txmq.errors import InvalidURL

SCHEMES = frozenset({"kafka"})


@dataclass(frozen=True, slots=True, repr=False)
class KafkaSettings:
    """Where and how to reach Kafka. Built by :func:`txmq.parse_broker_url`.

    ``options`` are passed to librdkafka as they are (``security.protocol``,
    ``sasl.mechanism``, ...); secrets among them are never printed. ``stall_timeout`` is
    txmq's own: seconds a consumer may have messages to read and receive none before it
    counts as wedged and is rebuilt (see :class:`~txmq.adapters.kafka.KafkaSubscription`).
    """

    bootstrap_servers: tuple[str, ...]
    options: Mapping[str, str] = field(default_factory=dict)
    partitions: int = 3
    replication_factor: int = 1
    stall_timeout: float = 60.0
    common: CommonSettings = field(default_factory=CommonSettings)

    system: Literal["kafka"] = "kafka"

    def redacted_url(self) -> str:
        query = "&".join(
            f"{k}={REDACTED if k in SECRET_OPTIONS else v}" for k, v in sorted(self.options.items())
        )
        return f"kafka://{','.join(self.bootstrap_servers)}" + (f"?{query}" if query else "")

    def __repr__(self) -> str:
        return f"KafkaSettings({self.redacted_url()!r})"


def parse_url(url: str, scheme: str) -> KafkaSettings:
    """Settings from a ``kafka://`` URL.

    Raises:
        InvalidURL: credentials before the host, no server, bad port or number.
    """
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
        "{}:{}".format(*host_port(part.strip(), 9092, url)) for part in netloc.split(",")
    )
    query = dict(parse_qsl(query_text, keep_blank_values=True))
    common = pop_common(query, url)
    try:
        partitions = int(query.pop("partitions", 3))
        replication_factor = int(query.pop("replication_factor", 1))
        stall_timeout = float(query.pop("stall_timeout", 60.0))
    except ValueError as exc:
        raise InvalidURL(f"bad number in broker URL {redact(url)}: {exc}") from None
    if partitions < 1 or replication_factor < 1:
        raise InvalidURL("partitions and replication_factor must be at least 1")
    if not stall_timeout > 0:  # also refuses nan
        raise InvalidURL(f"stall_timeout must be a positive number of seconds: {redact(url)}")
    return KafkaSettings(
        bootstrap_servers=servers,
        options=MappingProxyType(query),
        partitions=partitions,
        replication_factor=replication_factor,
        stall_timeout=stall_timeout,
        common=common,
    )
