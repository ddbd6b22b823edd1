"""Waiting until a broker really answers: TCP first, then one call of its own protocol.

A broker is ready when a client can use it, not when its port opens: RabbitMQ must accept
an AMQP login, Kafka must return cluster metadata, PostgreSQL and MariaDB must run
``SELECT 1``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from txmq.adapters.kafka.settings import KafkaSettings
from txmq.adapters.rabbitmq.settings import RabbitMQSettings
from txmq.adapters.registry import parse_broker_url
from txmq.testing.provision.common import Broker, ProvisionError

#: Called between attempts; returns why the broker cannot come up any more (it died), or None.
Liveness = Callable[[], str | None]

POLL_INTERVAL = 0.25


def _host_port(broker: Broker, url: str) -> tuple[str, int]:
    if broker == "kafka":
        first = (
            url.split("://", 1)[1].split(",", maxsplit=1)[0].split("?", maxsplit=1)[0].rstrip("/")
        )
        host, _, port = first.rpartition(":")
        return host, int(port)
    if broker == "rabbitmq":
        settings = parse_broker_url(url)
        assert isinstance(settings, RabbitMQSettings)
        return settings.host, settings.port
    parts = urlsplit(url)
    default = {"mariadb": 3306}.get(broker, 5432)
    return parts.hostname or "127.0.0.1", parts.port or default


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _check_rabbitmq(url: str, timeout: float) -> None:
    import pika

    settings = parse_broker_url(url)
    assert isinstance(settings, RabbitMQSettings)
    # Every node of a cluster must answer, not just the first.
    for host, port in settings.nodes:
        parameters = pika.ConnectionParameters(
            host=host,
            port=port,
            virtual_host=settings.virtual_host,
            credentials=pika.PlainCredentials(settings.username, settings.password),
            socket_timeout=timeout,
            blocked_connection_timeout=timeout,
            connection_attempts=1,
        )
        pika.BlockingConnection(parameters).close()


def _check_kafka(url: str, timeout: float) -> None:
    from confluent_kafka.admin import AdminClient

    settings = parse_broker_url(url)
    assert isinstance(settings, KafkaSettings)
    admin = AdminClient(
        {
            **settings.options,
            "bootstrap.servers": ",".join(settings.bootstrap_servers),
            "socket.timeout.ms": int(timeout * 1000),
        }
    )
    if not admin.list_topics(timeout=timeout).brokers:
        raise ProvisionError("Kafka returned metadata without brokers")


def _check_sql(url: str, timeout: float) -> None:
    import sqlalchemy

    # Both psycopg and PyMySQL take connect_timeout in whole seconds.
    engine = sqlalchemy.create_engine(
        url,
        poolclass=sqlalchemy.pool.NullPool,
        connect_args={"connect_timeout": max(1, int(timeout))},
    )
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1")).scalar_one()
    finally:
        engine.dispose()


_CHECKS: dict[Broker, Callable[[str, float], None]] = {
    "rabbitmq": _check_rabbitmq,
    "kafka": _check_kafka,
    "postgres": _check_sql,
    "mariadb": _check_sql,
}


def check(broker: Broker, url: str, timeout: float = 5.0) -> None:
    """One protocol-level call; raises whatever the driver raises when the broker is not ready."""
    _CHECKS[broker](url, timeout)


def wait_ready(broker: Broker, url: str, *, timeout: float, alive: Liveness | None = None) -> float:
    """Block until ``broker`` at ``url`` answers its protocol; return the seconds waited.

    Raises:
        ProvisionError: ``alive`` reports the broker died, or ``timeout`` passed; the
            message carries the last error seen.
    """
    started = time.monotonic()
    deadline = started + timeout
    host, port = _host_port(broker, url)
    last_error = "port not open yet"
    while True:
        if alive is not None and (death := alive()) is not None:
            raise ProvisionError(f"{broker} stopped while starting: {death}")
        if tcp_open(host, port):
            try:
                check(broker, url, timeout=min(5.0, max(1.0, deadline - time.monotonic())))
            except ImportError as exc:
                raise ProvisionError(
                    f"cannot check {broker}: {exc.name} is not installed (pip install 'txmq[all]')"
                ) from exc
            except Exception as exc:  # any driver error means "not yet"
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise ProvisionError(
                f"{broker} on {host}:{port} was not ready after {timeout:.0f} s ({last_error})"
            )
        time.sleep(POLL_INTERVAL)
