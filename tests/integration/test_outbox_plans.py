"""The outbox's own queries read only their partial indexes, whatever plan PostgreSQL makes.

psycopg prepares a statement once it has run five times on a connection, and PostgreSQL may
then plan it once for every parameter value (a generic plan). A generic plan cannot use a
partial index (``WHERE state = 'READY'``) for a query that states the state through a
parameter: it cannot prove the index's predicate. In the latency benchmark, after a burst at
1,000 msg/s, every claim of the relay's first lane then walked the primary key through all
220,000 records of the table, 13-16 ms a claim instead of 0.4 ms. Statistics skewed by
another group's READY records led the planner the same way, with the value known.

The tests count the rows of the table that one of the relay's, check-back's or purge's
operations reads, from PostgreSQL's statistics (``pg_stat_force_next_flush``: PostgreSQL 15
or later). Each table is this test's own, so the counts are its operations'. Before the
fixes, the operations read 20,000-40,000 rows, and the claim next to another group's
backlog 30,004.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Connection, Engine, MetaData, create_engine, text
from sqlalchemy.pool import StaticPool

import txmq
from txmq.outbox.store import ClaimedRecord, OutboxStore, utcnow

pytestmark = pytest.mark.database

HISTORY = 20_000
#: Far below the history: an operation that reads this many rows went through the table.
AT_MOST = 100


def one_connection(database_url: str, plan_cache_mode: str) -> Engine:
    """One connection (so its statistics can be read back), every statement prepared on its
    first run (psycopg's ``prepare_threshold``) and planned by ``plan_cache_mode``."""
    return create_engine(
        database_url,
        poolclass=StaticPool,
        connect_args={"prepare_threshold": 0, "options": f"-c plan_cache_mode={plan_cache_mode}"},
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """Every statement planned once for any parameter values."""
    engine = one_connection(database_url, "force_generic_plan")
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Iterator[OutboxStore]:
    """An outbox of one group: a day of SENT history and one record in each waiting state."""
    metadata = MetaData()
    tables = txmq.make_outbox_tables(metadata, prefix=f"plans_{uuid.uuid4().hex[:8]}_")
    try:
        metadata.create_all(engine)
        fill(engine, tables.records.name)
        yield OutboxStore(engine, tables)
    finally:
        metadata.drop_all(engine)


def fill(engine: Engine, name: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                f"INSERT INTO {name} (id, producer_group, topic, headers, body, state,"
                " created_at, updated_at)"
                " SELECT 'sent-' || g, 'shop', 'orders', '{}', 'x', 'SENT', now(), now()"
                " FROM generate_series(1, :rows) AS g"
            ),
            {"rows": HISTORY},
        )
        connection.execute(
            text(
                f"INSERT INTO {name} (id, producer_group, topic, key, headers, body, state,"
                " tx_key, check_after, deliver_at, created_at, updated_at) VALUES"
                " ('ready', 'shop', 'orders', 'order-1', '{}', 'x', 'READY', NULL, NULL, NULL,"
                "  now(), now()),"
                " ('prepared', 'shop', 'orders', NULL, '{}', 'x', 'PREPARED', 'tx-1',"
                "  now() - interval '1 minute', NULL, now(), now()),"
                " ('delayed', 'shop', 'orders', NULL, '{}', 'x', 'DELAYED', NULL, NULL,"
                "  now() - interval '1 minute', now(), now())"
            )
        )
    analyze(engine, name)


def analyze(engine: Engine, name: str) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"VACUUM ANALYZE {name}"))


def rows_read(connection: Connection, table: str) -> int:
    """Rows of ``table`` read so far, by every backend, sequentially or from the heap through
    an index. Index-only scans are not counted, and need not be: ``state`` is in no index
    that a plan could read without the table."""
    return int(
        connection.execute(
            text(
                "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
                " FROM pg_stat_user_tables WHERE relid = CAST(:table AS regclass)"
            ),
            {"table": table},
        ).scalar_one()
    )


def flushed_rows_read(engine: Engine, table: str) -> int:
    """:func:`rows_read`, once the backend's pending statistics are in shared memory."""
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_stat_force_next_flush()"))
        connection.commit()
        return rows_read(connection, table)


def in_transaction(
    operation: Callable[[OutboxStore, Connection], object],
) -> Callable[[OutboxStore], object]:
    def run(store: OutboxStore) -> object:
        with store.engine.begin() as connection:
            return operation(store, connection)

    return run


OPERATIONS: dict[str, Callable[[OutboxStore], object]] = {
    "the relay finds the groups with READY records": in_transaction(
        lambda store, connection: store.ready_groups(connection)
    ),
    "the relay claims from the start": in_transaction(
        lambda store, connection: store.claim_ready(connection, 1000, group="shop")
    ),
    "the check-back claims what is due": in_transaction(
        lambda store, connection: store.claim_due_checks(connection, "shop", 100, now=utcnow())
    ),
    "the relay finds the groups with DELAYED records": in_transaction(
        lambda store, connection: store.delayed_groups(connection)
    ),
    "the relay releases the due DELAYED records": lambda store: store.release_due(
        "shop", now=utcnow()
    ),
    "the purge finds nothing old enough": lambda store: store.purge(timedelta(days=1)),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_an_outbox_operation_reads_its_partial_index_under_a_generic_plan(
    store: OutboxStore, engine: Engine, operation: str
) -> None:
    table = store.tables.records.name
    run = OPERATIONS[operation]
    run(store)  # the statements are prepared now
    before = flushed_rows_read(engine, table)
    result = run(store)
    read = flushed_rows_read(engine, table) - before
    assert read <= AT_MOST, f"{operation}: read {read:,} rows of {HISTORY:,} (result {result!r})"


def test_the_claim_still_finds_its_record_under_a_generic_plan(store: OutboxStore) -> None:
    """The counts above could also be met by a query that finds nothing."""
    with store.engine.begin() as connection:
        assert store.ready_groups(connection) == ["shop"]
        claimed = store.claim_ready(connection, 1000, group="shop")
        assert [record.message.id for record in claimed] == ["ready"]
        due = store.claim_due_checks(connection, "shop", 10, now=utcnow())
        assert [record.message.id for record in due] == ["prepared"]
        assert store.delayed_groups(connection) == ["shop"]
    assert store.release_due("shop", now=utcnow())[0] == 1


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
def test_a_claim_reads_the_ready_index_when_another_group_holds_the_ready_records(
    database_url: str, plan_cache_mode: str
) -> None:
    """Statistics that put every READY record in another group (one whose relay is down,
    or that never runs one) made the planner walk the primary key for this group's claim,
    expecting a batch within the first pages: it read the whole table."""
    engine = one_connection(database_url, plan_cache_mode)
    metadata = MetaData()
    tables = txmq.make_outbox_tables(metadata, prefix=f"plans_{uuid.uuid4().hex[:8]}_")
    try:
        metadata.create_all(engine)
        name = tables.records.name
        with engine.begin() as connection:
            connection.execute(
                text(
                    f"INSERT INTO {name} (id, producer_group, topic, headers, body, state,"
                    " created_at, updated_at)"
                    " SELECT 'waiting-' || g, 'reports', 'reports', '{}', 'x', 'READY', now(),"
                    " now() FROM generate_series(1, :rows) AS g"
                ),
                {"rows": HISTORY // 2},
            )
            # Groups whose names sort next to this one's, or begin with it: none is claimed.
            connection.execute(
                text(
                    f"INSERT INTO {name} (id, producer_group, topic, headers, body, state,"
                    " created_at, updated_at) SELECT 'next-to-' || g, g, 'orders', '{}', 'x',"
                    " 'READY', now(), now() FROM unnest(ARRAY['sho', 'shoo', 'shop2', 'shopa',"
                    " 'shop ', 'Shop']) AS g"
                )
            )
        fill(engine, name)
        store = OutboxStore(engine, tables)

        def claim() -> list[ClaimedRecord]:
            with engine.begin() as connection:
                return store.claim_ready(connection, 1000, group="shop")

        claim()
        before = flushed_rows_read(engine, name)
        claimed = claim()
        read = flushed_rows_read(engine, name) - before
        assert [record.message.id for record in claimed] == ["ready"]
        assert read <= AT_MOST, f"the claim read {read:,} of the {HISTORY * 3 // 2:,} rows"
    finally:
        metadata.drop_all(engine)
        engine.dispose()
