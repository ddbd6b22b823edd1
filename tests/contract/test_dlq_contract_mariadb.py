"""The ``dlq`` contract suite with its database on MariaDB, on the memory broker.

The same suite as test_dlq_contract.py; only ``database_url`` (every suite's database)
points at the plugin's MariaDB instead of PostgreSQL. One broker, to keep CI short: the
consumer's SQL (inbox claims, dead-letter bookkeeping, the handler's transaction) is the
same whichever broker delivers; RabbitMQ and Kafka run this suite on PostgreSQL.
"""

from collections.abc import Iterator

import pytest

from txmq.testing.contract import dlq, expose
from txmq.testing.contract.apis import Api
from txmq.testing.contract.builtin import ADAPTERS


@pytest.fixture(scope="session")
def database_url(mysql_url: str) -> str:
    return mysql_url


expose(dlq, globals(), {"memory": ADAPTERS["memory"]})


@pytest.fixture(params=["sync"])
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    """The synchronous API only: txmq.aio has no asyncio MySQL driver to run on yet, so the
    async scenarios run on PostgreSQL and SQLite (test_*_contract.py)."""
    made = Api(request.param)
    yield made
    made.close()
