"""The ``delayed`` contract suite with its database on MariaDB, on the memory broker.

The same suite as test_delayed_contract.py; only ``database_url`` points at the plugin's
MariaDB. Releasing due records, cancelling and waking at the due time are SQL, the same for
every broker, so one broker keeps CI short.
"""

import pytest

from txmq.testing.contract import delayed, expose
from txmq.testing.contract.builtin import ADAPTERS


@pytest.fixture(scope="session")
def database_url(mysql_url: str) -> str:
    return mysql_url


expose(delayed, globals(), {"memory": ADAPTERS["memory"]})
