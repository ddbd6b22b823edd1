"""How the contract suites pick their tests per adapter, and txmq.testing.wait_for."""

from __future__ import annotations

import time
import types
from typing import Any

import pytest

from txmq.testing import wait_for
from txmq.testing.contract import Features, adapter, expose, fixtures, requires
from txmq.testing.contract.builtin import ADAPTERS

TWO = {"plain": Features(), "forked": Features(across_processes=True)}


def parametrized_ids(test: object) -> list[str]:
    (mark,) = [m for m in getattr(test, "pytestmark", []) if m.name == "parametrize"]
    assert mark.args[0] == "broker_url"
    assert mark.kwargs["indirect"] is True
    return list(mark.kwargs["ids"])


def test_a_test_runs_only_on_the_adapters_that_have_what_it_requires() -> None:
    namespace: dict[str, Any] = {}
    expose(adapter, namespace, TWO)
    redelivery = namespace["test_unacked_messages_are_redelivered_when_the_consumer_dies"]
    assert parametrized_ids(redelivery) == ["forked"]
    assert parametrized_ids(namespace["test_per_key_order_holds"]) == ["plain", "forked"]
    # The suite's own functions are left unmarked, for another module to expose.
    assert not hasattr(adapter.test_per_key_order_holds, "pytestmark")
    assert namespace["topic"] is adapter.topic  # the suite's own fixtures come along,
    assert namespace["broker"] is fixtures.broker  # and those the suites share


def test_a_test_that_applies_to_no_adapter_is_not_collected() -> None:
    namespace: dict[str, Any] = {}
    expose(adapter, namespace, {"plain": Features()})
    assert "test_unacked_messages_are_redelivered_when_the_consumer_dies" not in namespace
    assert "test_publish_n_consume_n_with_manual_ack" in namespace


def test_txmq_runs_every_suite_on_memory_rabbitmq_and_kafka() -> None:
    assert list(ADAPTERS) == ["memory", "rabbitmq", "kafka"]
    assert not ADAPTERS["memory"].across_processes


def test_requires_takes_flags_values_and_conditions() -> None:
    @requires("native_transactions", lambda f: f.across_processes, protocol="kafka")
    def needs_kafka() -> None: ...

    namespace: dict[str, Any] = {}
    kafka_like = Features(native_transactions=True, across_processes=True, protocol="kafka")
    not_quite = Features(native_transactions=True, across_processes=True, protocol="amqp-0-9-1")
    fake_suite = types.ModuleType("txmq.testing.contract.adapter")
    fake_suite.test_needs_kafka = needs_kafka  # type: ignore[attr-defined]
    expose(fake_suite, namespace, {"kafka": kafka_like, "other": not_quite})
    assert parametrized_ids(namespace["test_needs_kafka"]) == ["kafka"]


def test_a_misspelt_feature_is_an_error_at_import() -> None:
    with pytest.raises(TypeError, match="'native_transaction' is not a contract feature"):
        requires("native_transaction")
    with pytest.raises(TypeError, match="'protocl' is not a contract feature"):
        requires(protocl="kafka")


def test_expose_wants_a_suite_and_an_adapter() -> None:
    with pytest.raises(ValueError, match="needs at least one adapter"):
        expose(adapter, {}, {})
    with pytest.raises(ValueError, match="is not a txmq contract suite"):
        expose(types.ModuleType("my_tests"), {}, TWO)


def test_wait_for_returns_what_the_condition_found() -> None:
    answers = iter([None, [], ["letter"]])
    assert wait_for(lambda: next(answers), 5, "a letter") == ["letter"]


def test_wait_for_fails_saying_what_it_waited_for() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0.2 s waiting for the relay"):
        wait_for(lambda: False, 0.2, "the relay")
    assert time.monotonic() - started >= 0.2
