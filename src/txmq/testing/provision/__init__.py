"""Real RabbitMQ, Kafka, PostgreSQL and MariaDB for tests, as containers or as plain processes.

``container`` mode runs them with testcontainers: official images where a registry
answers, images built here from Debian packages where none does (a Docker engine is
installed and started if the machine allows). ``process`` mode runs Debian's RabbitMQ,
PostgreSQL and MariaDB and Kafka's jars from Maven Central directly. ``auto`` picks
containers wherever a Docker engine can be used.

Example:
    >>> from txmq.testing import provision
    >>> endpoints = provision.up(mode="auto")  # doctest: +SKIP
    >>> print("\\n".join(endpoints.env_lines()))  # doctest: +SKIP
    TXMQ_TEST_RABBITMQ_URL=rabbitmq://guest:guest@127.0.0.1:21672/
    ...
    >>> provision.down()  # doctest: +SKIP
"""

from __future__ import annotations

from txmq.testing.provision.common import (
    BROKERS,
    REQUESTED_MODES,
    URL_ENV,
    Broker,
    Mode,
    Ports,
    ProvisionError,
    RequestedMode,
    url_for,
)
from txmq.testing.provision.lifecycle import (
    Endpoints,
    alive,
    down,
    resolve_mode,
    start,
    status,
    stop,
    up,
)
from txmq.testing.provision.state import Running

__all__ = [
    "BROKERS",
    "REQUESTED_MODES",
    "URL_ENV",
    "Broker",
    "Endpoints",
    "Mode",
    "Ports",
    "ProvisionError",
    "RequestedMode",
    "Running",
    "alive",
    "down",
    "resolve_mode",
    "start",
    "status",
    "stop",
    "up",
    "url_for",
]
