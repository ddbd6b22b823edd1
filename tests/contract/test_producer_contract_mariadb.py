"""The ``producer`` contract suite with its database on MariaDB, on memory and Kafka.

The same suite as test_producer_contract.py; only ``database_url`` (every suite's database)
points at the plugin's MariaDB instead of PostgreSQL. Two brokers, not three, to keep CI
short: memory runs the SQL path RabbitMQ runs (relay, publish, mark), Kafka the one of
native transactions; the broker side of RabbitMQ is the same on every database.
"""

from collections.abc import Iterator

import pytest

from txmq.testing.contract import expose, producer
from txmq.testing.contract.apis import Api
from txmq.testing.contract.builtin import ADAPTERS


@pytest.fixture(scope="session")
def database_url(mysql_url: str) -> str:
    return mysql_url


expose(producer, globals(), {name: ADAPTERS[name] for name in ("memory", "kafka")})


@pytest.fixture(params=["sync"])
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    """The synchronous API only: txmq.aio has no asyncio MySQL driver to run on yet, so the
    async scenarios run on PostgreSQL and SQLite (test_*_contract.py)."""
    made = Api(request.param)
    yield made
    made.close()
