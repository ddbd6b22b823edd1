"""The contract suites: the scenarios every txmq adapter passes, written once.

txmq runs them on ``memory://``, RabbitMQ and Kafka; an adapter of your own (registered with
:func:`txmq.adapters.registry.register`) runs the very same ones. Each suite is a module:

- ``adapter``: publish, consume, ack, redelivery, competing consumers, per-key order;
- ``producer``: staged and half messages, check-back, relays, crashes, SQLite outboxes;
- ``delayed``: delayed messages: due time, relay restarts, cancel, wake-up, per-key order;
- ``consumer``: inbox, retries, DLQ, compensation, graceful stop, batches;
- ``dlq``: listing, replaying and purging dead letters, and the ``txmq dlq`` CLI;
- ``refusals``: messages the broker refuses, at stage or as FAILED records;
- ``unbound_topics``: messages for topics nobody consumes yet are held, not dropped;
- ``tracing``: one OpenTelemetry trace per message.

A test that needs what not every broker has says so with :func:`requires`; the
:class:`Features` you declare for your adapter decide which tests are collected for it
(a test that does not apply is not collected, rather than skipped). Every suite test takes
the ``broker_url`` fixture; PostgreSQL comes from the txmq pytest plugin's ``database_url``
(``$TXMQ_TEST_DATABASE_URL``, or a server the plugin starts).

Run a suite from one test module of yours per suite (they import SQLAlchemy, typer and
OpenTelemetry's SDK, so only when asked for), e.g. ``tests/test_txmq_consumer.py``::

    import pytest
    from txmq.testing.contract import Features, consumer, expose

    @pytest.fixture
    def broker_url() -> str:
        return "redis://127.0.0.1:6379/0"

    expose(consumer, globals(), {"redis": Features(across_processes=True)})

The test ids then end in ``[redis]``; with several adapters in the mapping, your
``broker_url`` fixture is asked for each in turn (``request.param`` is the adapter's name).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from types import FunctionType, ModuleType
from typing import Any

import pytest

from txmq.testing.contract.features import Features, requirements_of, requires

#: The suites, by module name.
SUITES = (
    "adapter",
    "producer",
    "delayed",
    "consumer",
    "dlq",
    "refusals",
    "unbound_topics",
    "tracing",
)

#: The fixture every suite test takes: the URL of the adapter under test.
URL_FIXTURE = "broker_url"


def expose(
    suite: ModuleType, namespace: MutableMapping[str, Any], adapters: Mapping[str, Features]
) -> None:
    """Make the test module whose ``globals()`` is ``namespace`` run ``suite`` on ``adapters``.

    Puts into ``namespace`` the fixtures the suites share (:mod:`.fixtures`), the suite's own
    fixtures, each of its tests that applies to at least
    one of ``adapters`` with ``broker_url`` parametrized (indirectly) by the names of the
    adapters it applies to, and a ``txmq_features`` fixture giving the :class:`Features` of
    the adapter a test runs on.

    Raises:
        ValueError: ``adapters`` is empty, or ``suite`` is not one of :data:`SUITES`.
    """
    if not adapters:
        raise ValueError("expose() needs at least one adapter to run the suite on")
    package, _, short = suite.__name__.rpartition(".")
    if package != __name__ or short not in SUITES:
        raise ValueError(f"{suite.__name__} is not a txmq contract suite ({', '.join(SUITES)})")
    from txmq.testing.contract import fixtures

    for name in fixtures.__all__:  # shared by the suites; a suite's own fixture wins
        namespace[name] = getattr(fixtures, name)
    for name, value in vars(suite).items():
        if name.startswith("_"):
            continue
        if name.startswith("test") and isinstance(value, FunctionType):
            names = _applicable(value, adapters)
            if names:
                parametrize = pytest.mark.parametrize(URL_FIXTURE, names, indirect=True, ids=names)
                namespace[name] = parametrize(_copy(value))
        else:
            namespace[name] = value

    def txmq_features(request: pytest.FixtureRequest) -> Features:
        """The :class:`Features` of the adapter this test runs on."""
        return adapters[request.node.callspec.params[URL_FIXTURE]]

    namespace["txmq_features"] = pytest.fixture(txmq_features)


def _copy(test: FunctionType) -> FunctionType:
    """A copy of ``test`` to mark, so that the suite's own function stays as it was (another
    module may expose the same suite on other adapters)."""
    copy = FunctionType(
        test.__code__, test.__globals__, test.__name__, test.__defaults__, test.__closure__
    )
    copy.__dict__.update(test.__dict__)
    copy.__kwdefaults__ = test.__kwdefaults__
    copy.__annotations__ = test.__annotations__
    copy.__module__ = test.__module__
    copy.__qualname__ = test.__qualname__
    copy.__doc__ = test.__doc__
    return copy


def _applicable(test: object, adapters: Mapping[str, Features]) -> list[str]:
    """The names of the ``adapters`` whose features meet what ``test`` requires."""
    needs = requirements_of(test)
    return [name for name, features in adapters.items() if features.meets(needs)]


__all__ = ["SUITES", "URL_FIXTURE", "Features", "expose", "requires"]
