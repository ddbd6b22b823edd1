"""What an adapter under test can do, and which contract tests need what.

The suites run every test on every adapter unless the test says, with :func:`requires`, that
it needs something a broker may lack; :class:`Features` tells, per adapter, what it has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

#: Publishes a message that is not txmq's (no ``x-txmq-id``) to a topic, as a legacy
#: application would: ``raw_publish(broker_url, topic, body, headers)``.
RawPublish = Callable[[str, str, bytes, Mapping[str, str]], None]

#: What :func:`requires` takes besides flag names: a test of an adapter's features.
Condition = Callable[["Features"], bool]

_Test = TypeVar("_Test", bound=Callable[..., object])

#: The attribute :func:`requires` sets on a test function.
REQUIREMENTS_ATTRIBUTE = "txmq_contract_requires"


@dataclass(frozen=True, slots=True, kw_only=True)
class Features:
    """What an adapter under test can do that not every broker can (all off by default).

    Attributes:
        across_processes: another process that connects with the same URL reaches the
            same broker (false for ``memory://``, whose broker lives in one process): the
            tests that kill a producer, a relay or a consumer process need it.
        native_transactions: the broker keeps a half message in an open transaction of its
            own, invisible to consumers until committed and gone when aborted (Kafka); the
            others have the relay publish it after the local commit.
        abandon_url_options: URL options (``name=value&...``) after which the broker gives
            up, within seconds, an open transaction whose producer was killed (Kafka:
            ``transaction.timeout.ms=5000``); empty where nothing is left open.
        replays_to_work_queue: a replayed dead letter is sent to the group's work queue
            (RabbitMQ, memory) rather than to the topic, where every group reads it and
            only the addressed group handles it (Kafka).
        dead_letters_stay_after_replay: the dead-letter queue is a log that keeps a
            replayed letter, listed again with ``include_replayed`` (Kafka); elsewhere a
            replayed letter has left the queue.
        unroutable_held_in_a_queue: a message for a topic no queue is bound for waits in a
            queue of its own (``Adapter.unroutable_queue``: RabbitMQ, memory) until it is
            re-routed; Kafka keeps it in the topic itself.
        raw_publish: publishes a message that is not txmq's to a topic (see
            :data:`RawPublish`); ``None``: the undecodable-message tests do not run.
        protocol: the wire protocol, for the tests that check the broker with its own
            client (``"kafka"``: confluent-kafka; ``"amqp-0-9-1"``: pika); ``None``: none.
    """

    across_processes: bool = False
    native_transactions: bool = False
    abandon_url_options: str = ""
    replays_to_work_queue: bool = False
    dead_letters_stay_after_replay: bool = False
    unroutable_held_in_a_queue: bool = False
    raw_publish: RawPublish | None = None
    protocol: str | None = None

    def meets(self, requirements: Requirements) -> bool:
        """Whether these features satisfy every one of ``requirements``."""
        return all(condition(self) for condition in requirements)


#: What one test needs: every condition must hold.
Requirements = tuple[Condition, ...]

_FIELDS = frozenset(field.name for field in dataclasses.fields(Features))


def _flag(name: str) -> Condition:
    return lambda features: bool(getattr(features, name))


def _equal(name: str, value: object) -> Condition:
    return lambda features: getattr(features, name) == value


def requires(*needs: str | Condition, **values: object) -> Callable[[_Test], _Test]:
    """Run the decorated contract test only on adapters whose :class:`Features` have each
    flag in ``needs`` set (``"native_transactions"``), pass each condition in ``needs``, and
    equal each of ``values`` (``protocol="kafka"``). Elsewhere it is not collected.

    Raises:
        TypeError: a name is not a field of :class:`Features`.

    Example:
        >>> @requires("across_processes")
        ... def test_a_killed_consumer_loses_nothing(broker_url: str) -> None: ...
    """
    conditions: list[Condition] = []
    for need in needs:
        if isinstance(need, str):
            _check_field(need)
            conditions.append(_flag(need))
        else:
            conditions.append(need)
    for name, value in values.items():
        _check_field(name)
        conditions.append(_equal(name, value))

    def mark(test: _Test) -> _Test:
        before: Requirements = getattr(test, REQUIREMENTS_ATTRIBUTE, ())
        setattr(test, REQUIREMENTS_ATTRIBUTE, (*before, *conditions))
        return test

    return mark


def requirements_of(test: object) -> Requirements:
    """What :func:`requires` said ``test`` needs (nothing: it runs everywhere)."""
    found: Requirements = getattr(test, REQUIREMENTS_ATTRIBUTE, ())
    return found


def _check_field(name: str) -> None:
    if name not in _FIELDS:
        raise TypeError(f"{name!r} is not a contract feature (one of {', '.join(sorted(_FIELDS))})")
