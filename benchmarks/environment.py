"""Where the benchmark runs: the brokers and PostgreSQL it uses, the machine, the versions."""

from __future__ import annotations

import os
import platform
import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from sqlalchemy import Engine, create_engine, text

import txmq


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The URLs measured against; a broker left out (``None``) is skipped."""

    rabbitmq: str | None
    kafka: str | None
    database: str

    def brokers(self) -> list[tuple[str, str]]:
        return [
            (name, url) for name, url in (("rabbitmq", self.rabbitmq), ("kafka", self.kafka)) if url
        ]


def endpoints(
    rabbitmq: str | None, kafka: str | None, database: str | None, brokers: list[str]
) -> Endpoints:
    """The URLs given, else ``TXMQ_TEST_*_URL``, else brokers started by ``txmq brokers up``
    (left running afterwards, like that command does)."""
    urls = {
        "rabbitmq": rabbitmq or os.environ.get("TXMQ_TEST_RABBITMQ_URL"),
        "kafka": kafka or os.environ.get("TXMQ_TEST_KAFKA_URL"),
        "postgres": database or os.environ.get("TXMQ_TEST_DATABASE_URL"),
    }
    wanted = [name for name in (*brokers, "postgres") if urls[name] is None]
    if wanted:
        from txmq.testing import provision

        print(f"starting {', '.join(wanted)} with txmq brokers up ...", file=sys.stderr)
        started = provision.up(brokers=wanted)  # type: ignore[arg-type]
        urls["rabbitmq"] = urls["rabbitmq"] or started.rabbitmq_url
        urls["kafka"] = urls["kafka"] or started.kafka_url
        urls["postgres"] = urls["postgres"] or started.database_url
    assert urls["postgres"] is not None
    return Endpoints(
        rabbitmq=urls["rabbitmq"] if "rabbitmq" in brokers else None,
        kafka=urls["kafka"] if "kafka" in brokers else None,
        database=urls["postgres"],
    )


@contextmanager
def benchmark_database(server_url: str) -> Iterator[str]:
    """A new database on the server with txmq's default tables, dropped afterwards, so that
    nothing measured shares a table with anyone else's."""
    from txmq.testing.databases import fresh_postgres_database

    with fresh_postgres_database(server_url) as url:
        yield url


def mysql_endpoint(url: str | None) -> str:
    """The MariaDB/MySQL server URL given, else ``TXMQ_TEST_MYSQL_URL``, else one started by
    ``txmq brokers up`` (left running afterwards)."""
    found = url or os.environ.get("TXMQ_TEST_MYSQL_URL")
    if found:
        return found
    from txmq.testing import provision

    print("starting mariadb with txmq brokers up ...", file=sys.stderr)
    started = provision.up(brokers=["mariadb"]).mysql_url
    assert started is not None
    return started


@contextmanager
def benchmark_mysql_database(server_url: str | None) -> Iterator[str | None]:
    """A new database on the MariaDB/MySQL server (dropped afterwards); None without one."""
    if server_url is None:
        yield None
        return
    from txmq.testing.databases import fresh_mariadb_database

    with fresh_mariadb_database(server_url) as url:
        yield url


def engine_for(url: str, pool_size: int = 5) -> Engine:
    return create_engine(url, pool_size=pool_size, max_overflow=10)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def describe(urls: Endpoints, engine: Engine) -> dict[str, Any]:
    """The machine, the client libraries and the servers measured on."""
    with engine.connect() as connection:
        settings = {
            name: connection.execute(text(f"SHOW {name}")).scalar_one()
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
    servers: dict[str, Any] = {"postgresql": settings}
    if urls.rabbitmq:
        servers["rabbitmq"] = _rabbitmq_version(urls.rabbitmq)
    if urls.kafka:
        servers["kafka"] = {"bootstrap": list(_kafka_settings(urls.kafka).bootstrap_servers)}
    load = os.getloadavg()
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in load],
            "python": sys.version.split()[0],
        },
        "versions": {
            name: _version(name)
            for name in ("txmq", "pika", "confluent-kafka", "psycopg", "SQLAlchemy")
        }
        | {"librdkafka": _librdkafka()},
        "servers": servers,
        "urls": {
            "rabbitmq": txmq.redact(urls.rabbitmq) if urls.rabbitmq else None,
            "kafka": txmq.redact(urls.kafka) if urls.kafka else None,
        },
    }


def rabbitmq_settings(url: str) -> txmq.RabbitMQSettings:
    settings = txmq.parse_broker_url(url)
    assert isinstance(settings, txmq.RabbitMQSettings), f"not a RabbitMQ URL: {txmq.redact(url)}"
    return settings


def _kafka_settings(url: str) -> txmq.KafkaSettings:
    settings = txmq.parse_broker_url(url)
    assert isinstance(settings, txmq.KafkaSettings), f"not a Kafka URL: {txmq.redact(url)}"
    return settings


def kafka_config(url: str) -> dict[str, Any]:
    """librdkafka settings of a raw client on the same Kafka as ``url``."""
    settings = _kafka_settings(url)
    return {"bootstrap.servers": ",".join(settings.bootstrap_servers), **settings.options}


def pika_parameters(url: str) -> Any:
    """Connection parameters of a raw pika client on the same RabbitMQ as ``url``."""
    import pika

    settings = rabbitmq_settings(url)
    return pika.ConnectionParameters(
        host=settings.host,
        port=settings.port,
        virtual_host=settings.virtual_host,
        credentials=pika.PlainCredentials(settings.username, settings.password),
        ssl_options=pika.SSLOptions(ssl.create_default_context()) if settings.tls else None,
    )


def _rabbitmq_version(url: str) -> dict[str, Any]:
    import pika

    connection = pika.BlockingConnection(pika_parameters(url))
    try:
        # pika keeps the broker's connection.start properties on the connection itself.
        properties = connection._impl.server_properties
        version = properties.get("version", b"")
        return {"version": version.decode() if isinstance(version, bytes) else version}
    finally:
        connection.close()


def _librdkafka() -> str | None:
    try:
        import confluent_kafka
    except ImportError:
        return None
    return str(confluent_kafka.libversion()[0])


def remove_topologies(broker: str, url: str, topologies: list[txmq.Topology], marker: str) -> None:
    """Delete the queues (RabbitMQ) or topics (Kafka: every topic whose name holds this
    run's unique ``marker``) the benchmark made on the shared broker, its own only."""
    if broker == "rabbitmq":
        from benchmarks.rabbitmq_raw import delete_queues

        queues: list[str] = []
        for topology in topologies:
            # Consumers declare the default retry stages as well.
            staged = txmq.Topology(topology.group, topology.topic, retry_delays=(1, 5, 30))
            queues += [staged.work_queue, staged.dead_letter_queue, *staged.retry_queues()]
        delete_queues(url, queues)
        return
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka_config(url))
    topics = [t for t in admin.list_topics(timeout=30).topics if marker in t]
    if topics:
        for future in admin.delete_topics(topics).values():
            future.result(timeout=30)
