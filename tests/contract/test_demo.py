"""The README's demo, as a test on both brokers: the books balance."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine

import txmq
from txmq.demo import run_demo

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def test_bank_transfer_demo_balances(broker_url: str, engine: Engine) -> None:
    broker = txmq.connect(broker_url)
    try:
        result = run_demo(broker, engine, timeout=90, echo=False)
    finally:
        broker.close()
    assert result.balanced, result
    assert result.retried == 1
    assert result.dead_lettered == 1
    assert result.refunds == 1
    assert result.duplicates_ignored >= 1
