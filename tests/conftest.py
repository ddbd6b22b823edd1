"""Fixtures shared by txmq's own tests (the pytest plugin, ``txmq.testing.pytest_plugin``,
gives the brokers, databases and unique names; the contract suites bring their own)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

import txmq
from txmq.testing import wait_for

# Three-node clusters take minutes and six broker processes: collected on demand only.
collect_ignore = [] if os.environ.get("TXMQ_CLUSTER_TESTS") == "1" else ["cluster"]


@pytest.fixture
def broker(broker_url: str) -> Iterator[txmq.Adapter]:
    """The adapter of ``broker_url`` (each broker in turn), closed after the test."""
    adapter = txmq.connect(broker_url)
    yield adapter
    adapter.close()


@pytest.fixture
def wait_until() -> Callable[..., object]:
    """:func:`txmq.testing.wait_for`, for the tests that take it as a fixture."""
    return wait_for


@pytest.fixture
def unique() -> Callable[[str], str]:
    """``unique(prefix)``: ``<prefix>-<suffix>``, one suffix per test, shared by its names."""
    suffix = uuid.uuid4().hex[:10]
    return lambda prefix: f"{prefix}-{suffix}"
