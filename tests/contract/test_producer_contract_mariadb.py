"""The ``producer`` contract suite with its database on MariaDB, on memory and Kafka.

The same suite as test_producer_contract.py; only ``database_url`` (every suite's database)
points at the plugin's MariaDB instead of PostgreSQL. Two brokers, not three, to keep CI
short: memory runs the SQL path RabbitMQ runs (relay, publish, mark), Kafka the one of
native transactions; the broker side of RabbitMQ is the same on every database.
"""

import pytest

from txmq.testing.contract import expose, producer
from txmq.testing.contract.builtin import ADAPTERS


@pytest.fixture(scope="session")
def database_url(mysql_url: str) -> str:
    return mysql_url


expose(producer, globals(), {name: ADAPTERS[name] for name in ("memory", "kafka")})
