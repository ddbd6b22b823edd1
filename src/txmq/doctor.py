"""The checks of ``txmq doctor`` (:mod:`txmq.cli.doctor`): is this deployment able to work?
One finding per check, one exit code per kind of problem, so that a script (or a person at
3 a.m.) knows what to fix first.

The checks, in order; a failed one skips those that need it:

1. the database answers (unreachable and refused credentials are told apart);
2. txmq's tables, indexes and trigger are there (:mod:`txmq.schema_check`);
3. the database's clock agrees with this host's (records carry this host's times);
4. the broker answers (unreachable and refused credentials are told apart);
5. the broker's topology accepts txmq's (e.g. an exchange an older txmq declared);
6. how large a message the broker takes: ``max_body_bytes``, or less where the broker's own
   limit is lower (Kafka's ``message.max.bytes``; ``stage()`` refuses larger bodies).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, MetaData, Table, func, select
from sqlalchemy.exc import SQLAlchemyError

from txmq.adapters import Adapter, connect
from txmq.config import describe
from txmq.database_errors import refusal
from txmq.errors import BrokerUnavailable, TopologyError
from txmq.sql.tables import OutboxTables, make_inbox_table, make_outbox_tables

#: Clock difference from the database above which the check fails: check-back immunity and
#: retry times are written by one host and compared by another.
MAX_CLOCK_SKEW = 1.0


class Problem(enum.IntEnum):
    """The exit code of ``txmq doctor``: the first problem found, 0 when none."""

    NONE = 0
    DATABASE_UNREACHABLE = 3
    DATABASE_REFUSED = 4
    SCHEMA = 5
    CLOCK_SKEW = 6
    BROKER_UNREACHABLE = 7
    BROKER_REFUSED = 8
    TOPOLOGY = 9
    CONFIGURATION = 2


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's result: ``problem`` is NONE when it passed."""

    check: str
    problem: Problem
    detail: str

    @property
    def ok(self) -> bool:
        return self.problem is Problem.NONE


def examine_database(engine: Engine, *, prefix: str, inbox: str) -> list[Finding]:
    """The database checks (1-3)."""
    from txmq.schema_check import schema_differences

    try:
        with engine.connect() as connection:
            asked = datetime.now(UTC)
            server_time = connection.execute(select(func.current_timestamp())).scalar_one()
            answered = datetime.now(UTC)
    except SQLAlchemyError as exc:
        refused = refusal(exc)
        if refused is not None:
            return [Finding("database", Problem.DATABASE_REFUSED, str(refused))]
        return [Finding("database", Problem.DATABASE_UNREACHABLE, describe(exc))]
    found = [Finding("database", Problem.NONE, "answers")]
    metadata = MetaData()
    tables: list[Table | OutboxTables] = [
        make_outbox_tables(metadata, prefix=prefix),
        make_inbox_table(metadata, inbox),
    ]
    differences = schema_differences(engine, tables)
    if differences:
        found.append(Finding("schema", Problem.SCHEMA, "; ".join(differences)))
    else:
        found.append(Finding("schema", Problem.NONE, "txmq's tables, indexes and trigger"))
    if engine.dialect.name == "sqlite":
        found.append(Finding("clock", Problem.NONE, "an embedded database keeps this host's time"))
    else:
        found.append(_clock(server_time, asked, answered))
    return found


def _clock(server_time: datetime, asked: datetime, answered: datetime) -> Finding:
    """The database read ``server_time`` between ``asked`` and ``answered`` (this host's
    times): only a difference beyond that round trip is the clocks' own, however slow the
    round trip (a loaded host) or what ran after it."""
    if server_time.tzinfo is None:  # a server that keeps no zone keeps UTC
        server_time = server_time.replace(tzinfo=UTC)
    least = (asked - server_time).total_seconds()
    most = (answered - server_time).total_seconds()
    skew = (least + most) / 2
    detail = f"this host is {abs(skew):.3f} s {'ahead of' if skew >= 0 else 'behind'} the database"
    if least > MAX_CLOCK_SKEW or most < -MAX_CLOCK_SKEW:
        return Finding("clock", Problem.CLOCK_SKEW, f"{detail} (more than {MAX_CLOCK_SKEW} s)")
    return Finding("clock", Problem.NONE, detail)


def examine_broker(url: str | None) -> list[Finding]:
    """The broker checks (4-6)."""
    from txmq.process.service import broker_refusal

    try:
        broker = connect(url)
    except BrokerUnavailable as exc:
        refused = broker_refusal(exc)
        if refused is not None:
            return [Finding("broker", Problem.BROKER_REFUSED, str(refused))]
        return [Finding("broker", Problem.BROKER_UNREACHABLE, describe(exc))]
    try:
        return [Finding("broker", Problem.NONE, broker.settings.redacted_url()), *_topology(broker)]
    finally:
        broker.close()


def _topology(broker: Adapter) -> list[Finding]:
    try:
        with broker.publisher() as publisher:
            publisher.connect()
    except TopologyError as exc:
        return [Finding("topology", Problem.TOPOLOGY, describe(exc))]
    wanted, accepted = broker.max_body_bytes, broker.publish_limit()
    size = (
        f"stage() takes bodies up to {accepted} bytes"
        if accepted >= wanted
        else f"stage() takes bodies up to {accepted} bytes, the broker's limit "
        f"(max_body_bytes is {wanted})"
    )
    return [
        Finding("topology", Problem.NONE, "txmq can publish"),
        Finding("message size", Problem.NONE, size),
    ]
