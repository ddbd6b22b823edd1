"""Samplers that set the gauges an operator alerts on, from the database and the broker.

A long-running process (``txmq worker``) calls the samplers' ``sample()`` every few
seconds; each sets gauges of :mod:`txmq.telemetry` (no-ops without prometheus-client):

* ``txmq_outbox_records{group, state}``: one ``GROUP BY`` over the groups' records, every
  :class:`~txmq.states.RecordState` set (0 when none). No index serves it: PostgreSQL
  reads the table, SENT and ROLLED_BACK records included until they are purged (about
  160 ms per million records), so keep the retention short or sample less often;
* ``txmq_outbox_oldest_age_seconds{group, state}`` for ``READY`` and ``PREPARED``: the
  age since the oldest such record was staged, found through the partial indexes of those
  states, 0 when there is none;
* ``txmq_dlq_depth{group, topic}`` (:class:`DeadLetterSampler`): the letters waiting in
  each dead-letter queue, where the broker can tell (see :meth:`txmq.Adapter.queue_depth`);
* ``txmq_consumer_lag{group, topic}`` (:class:`ConsumerLagSampler`): what each consumer
  group has yet to take (see :meth:`txmq.Adapter.consumer_lag`);
* ``txmq_sagas{saga, state}`` (:class:`SagaSampler`): the orchestrated saga instances by
  saga name and :class:`~txmq.saga.SagaState` (one ``GROUP BY`` over the saga table).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Table, func, select
from sqlalchemy.exc import DBAPIError

from txmq.adapters.base import Adapter
from txmq.adapters.names import dead_letter_queue
from txmq.config import describe
from txmq.database_errors import is_outage, refusal
from txmq.errors import ConfigurationError, DatabaseUnavailable
from txmq.message import validate_name
from txmq.outbox.store import OutboxStore, utcnow
from txmq.saga.definition import SagaState
from txmq.saga.store import SagaStore
from txmq.sql.dialect import SqlDialect
from txmq.sql.schema import as_schema_missing
from txmq.sql.tables import in_state
from txmq.states import RecordState
from txmq.telemetry import (
    CONSUMER_LAG,
    DLQ_DEPTH,
    OUTBOX_OLDEST_AGE,
    OUTBOX_RECORDS,
    SAGAS,
    Metric,
)


@dataclass(frozen=True, slots=True)
class GroupSample:
    """What one sample found for one producer group.

    Attributes:
        counts: records per state (every state present, 0 when none).
        oldest_age: seconds since the oldest READY and the oldest PREPARED record was
            staged; None when there is none.
    """

    counts: dict[RecordState, int]
    oldest_age: dict[RecordState, float | None]


class OutboxSampler:
    """Samples the outbox of some producer groups into the ``txmq_outbox_*`` gauges.

    Raises (constructor):
        ConfigurationError: no group.
        InvalidMessage: an invalid group name.
    """

    def __init__(self, *, store: OutboxStore, groups: Sequence[str]) -> None:
        if not groups:
            raise ConfigurationError("OutboxSampler needs at least one producer group")
        for group in groups:
            validate_name(group, "group")
        self.store = store
        self.groups = tuple(dict.fromkeys(groups))

    def sample(self) -> dict[str, GroupSample]:
        """Query the outbox, set the gauges, and return what was found per group.

        Raises:
            DatabaseUnavailable: the database cannot be reached (the gauges keep their
                last values).
            DatabaseRefused: the database refused the connection.
            SchemaMissing: the outbox table does not exist.
        """
        try:
            found = self._query()
        except DBAPIError as exc:
            raise _database_error(exc) from exc
        for group, sample in found.items():
            for state, count in sample.counts.items():
                OUTBOX_RECORDS.labels(group, state.value).set(count)
            for state, age in sample.oldest_age.items():
                OUTBOX_OLDEST_AGE.labels(group, state.value).set(age or 0.0)
        return found

    def _query(self) -> dict[str, GroupSample]:
        records = self.store.tables.records
        counts = {group: dict.fromkeys(RecordState, 0) for group in self.groups}
        oldest: dict[str, dict[RecordState, float | None]] = {}
        with self.store.engine.connect() as connection:
            rows = connection.execute(
                select(records.c.producer_group, records.c.state, func.count())
                .where(records.c.producer_group.in_(self.groups))
                .group_by(records.c.producer_group, records.c.state)
            )
            for group, state, count in rows:
                counts[group][RecordState(state)] = count
            for group in self.groups:
                staged = connection.execute(oldest_staged(records, group, sql=self.store.sql)).one()
                now = utcnow()
                oldest[group] = {
                    RecordState.READY: _age(now, staged[0]),
                    RecordState.PREPARED: _age(now, staged[1]),
                }
            connection.rollback()
        return {group: GroupSample(counts[group], oldest[group]) for group in self.groups}


class _BrokerSampler(abc.ABC):
    """Samples one number per (group, topic) from the broker into a gauge."""

    _gauge: Metric
    _what: str

    def __init__(self, *, broker: Adapter, queues: Iterable[tuple[str, str]]) -> None:
        self.broker = broker
        self.queues = tuple(dict.fromkeys(queues))
        if not self.queues:
            raise ConfigurationError(f"{type(self).__name__} needs at least one (group, topic)")
        for group, topic in self.queues:
            validate_name(group, "group")
            validate_name(topic, "topic")

    def sample(self) -> dict[tuple[str, str], int | None]:
        """Ask the broker for each (group, topic), set the gauges, and return the numbers
        (None where the broker cannot tell; that gauge is not set).

        Raises:
            BrokerUnavailable: the broker cannot be reached (the gauges keep their last
                values).
            BrokerError: the broker refused to tell.
        """
        found: dict[tuple[str, str], int | None] = {}
        for group, topic in self.queues:
            number = found[group, topic] = self._ask(group, topic)
            if number is not None:
                self._gauge.labels(group, topic).set(number)
        return found

    @abc.abstractmethod
    def _ask(self, group: str, topic: str) -> int | None:
        """The broker's number for (group, topic), or None when it cannot tell."""


class DeadLetterSampler(_BrokerSampler):
    """Samples the depth of the dead-letter queues of (consumer group, topic) pairs into
    ``txmq_dlq_depth{group, topic}`` (see :meth:`txmq.Adapter.queue_depth`: on RabbitMQ the
    messages ready in the queue, on Kafka the letters not replayed or purged). A DLQ that
    does not exist yet counts 0.

    Raises (constructor):
        ConfigurationError: no pair.
        InvalidMessage: an invalid group or topic name.
    """

    _gauge = DLQ_DEPTH

    def _ask(self, group: str, topic: str) -> int | None:
        return self.broker.queue_depth(dead_letter_queue(group, topic))


class ConsumerLagSampler(_BrokerSampler):
    """Samples how far (consumer group, topic) pairs are behind into
    ``txmq_consumer_lag{group, topic}`` (see :meth:`txmq.Adapter.consumer_lag`: on Kafka the
    records after the group's committed offsets, on RabbitMQ the messages ready in its work
    queue; retry stages are not counted).

    Raises (constructor):
        ConfigurationError: no pair.
        InvalidMessage: an invalid group or topic name.
    """

    _gauge = CONSUMER_LAG

    def _ask(self, group: str, topic: str) -> int | None:
        return self.broker.consumer_lag(group, topic)


def oldest_staged(records: Table, group: str, *, sql: SqlDialect | None = None) -> Select[Any]:
    """One row: when the oldest READY and the oldest PREPARED record of ``group`` were staged.

    Neither scans the table: READY is the first in publishing order, along the partial index
    on ``(producer_group, seq)``; PREPARED the minimum over the group's part of the partial
    index on ``(producer_group, check_after)``. ``sql``, the database's dialect, writes the
    READY lookup as the relay's claim is written (see ``SqlDialect.after_in_group``).
    """
    in_group = records.c.producer_group == group
    ready_query = select(records.c.created_at).where(in_state(records, RecordState.READY))
    ready = (
        (sql or SqlDialect("generic"))
        .after_in_group(
            ready_query, records.c.producer_group, records.c.seq, group_value=group, after=0
        )
        .limit(1)
        .scalar_subquery()
    )
    prepared = (
        select(func.min(records.c.created_at))
        .where(in_state(records, RecordState.PREPARED), in_group)
        .scalar_subquery()
    )
    return select(ready, prepared)


def _age(now: datetime, staged: datetime | None) -> float | None:
    if staged is None:
        return None
    if staged.tzinfo is None:  # SQLite hands back naive UTC
        staged = staged.replace(tzinfo=now.tzinfo)
    return max(0.0, (now - staged).total_seconds())


class SagaSampler:
    """Samples the saga instances of a saga table into ``txmq_sagas{saga, state}``."""

    def __init__(self, *, store: SagaStore) -> None:
        self.store = store

    def sample(self) -> dict[str, dict[SagaState, int]]:
        """Count the instances per saga name and state, set the gauges, return the counts.

        Raises:
            DatabaseUnavailable: the database cannot be reached (the gauges keep their
                last values).
            DatabaseRefused: the database refused the connection.
            SchemaMissing: the saga table does not exist.
        """
        try:
            found = self.store.count_by_state()
        except DBAPIError as exc:
            raise _database_error(exc) from exc
        for saga, counts in found.items():
            for state, count in counts.items():
                SAGAS.labels(saga, state.value).set(count)
        return found


def _database_error(exc: DBAPIError) -> Exception:
    missing = as_schema_missing(exc)
    if missing is not None:
        return missing
    refused = refusal(exc)
    if refused is not None:
        return refused
    if is_outage(exc):
        return DatabaseUnavailable(f"the database is unavailable: {describe(exc)}")
    return exc


__all__ = [
    "ConsumerLagSampler",
    "DeadLetterSampler",
    "GroupSample",
    "OutboxSampler",
    "SagaSampler",
    "oldest_staged",
]
