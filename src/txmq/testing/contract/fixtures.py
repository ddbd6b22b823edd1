"""Fixtures the suites share: an adapter on the URL under test, an engine on the test
database, and the API a scenario drives (``api``: sync or async, see :mod:`.apis`). A suite
imports them, so :func:`~txmq.testing.contract.expose` hands them to the test module with
the suite's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine

import txmq
from txmq.testing.contract.apis import api


@pytest.fixture
def broker(broker_url: str) -> Iterator[txmq.Adapter]:
    """The adapter under test, connected (checked) and closed after the test."""
    adapter = txmq.connect(broker_url)
    yield adapter
    adapter.close()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the test database, with room for a relay's lanes and a consumer."""
    engine = create_engine(database_url, pool_size=10)
    yield engine
    engine.dispose()


__all__ = ["api", "broker", "engine"]
