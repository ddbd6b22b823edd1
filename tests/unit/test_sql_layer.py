"""The SQL layer on SQLite and as compiled for other dialects: table factories, the dialect
strategies, insert-or-detect-duplicate, the direct-cursor statement, the idle waiter, and
the import rule that keeps ``txmq.sql.tables`` a leaf."""

from __future__ import annotations

import ast
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect

import txmq
from txmq.errors import ConfigurationError
from txmq.sql import dialect as sql_dialect
from txmq.sql.dialect import DirectStatement, SqlDialect, UniqueInsert, dialect_of
from txmq.sql.tables import (
    OutboxTables,
    default_inbox_table,
    default_outbox_tables,
    each_table,
    make_inbox_table,
    make_outbox_tables,
    metadata,
    notify_ddl,
)

SQL_PACKAGE = Path(txmq.__file__).parent / "sql"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'sql.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def keyed(engine: Engine) -> Table:
    table = Table(
        "keyed",
        MetaData(),
        Column("k", String(20), primary_key=True),
        Column("v", String(20), nullable=False),
        Column("n", Integer, nullable=True),
    )
    table.create(engine)
    return table


# -- tables --------------------------------------------------------------------------------


def test_both_factories_take_a_prefix_and_a_schema() -> None:
    md = MetaData()
    outbox = make_outbox_tables(md, prefix="shop_", schema="billing")
    inbox = make_inbox_table(md, prefix="shop_", schema="billing")
    assert [t.fullname for t in each_table([outbox, inbox])] == [
        "billing.shop_outbox",
        "billing.shop_tx_marker",
        "billing.shop_inbox",
    ]
    # Asked again, the same tables; in another schema, others.
    assert make_outbox_tables(md, prefix="shop_", schema="billing") == outbox
    assert make_inbox_table(md, prefix="shop_", schema="billing") is inbox
    assert make_inbox_table(md, prefix="shop_") is not inbox
    assert make_outbox_tables(md, prefix="shop_").records is not outbox.records


def test_the_inbox_keeps_its_name_option_and_refuses_a_name_with_a_prefix() -> None:
    md = MetaData()
    assert make_inbox_table(md).name == "txmq_inbox"
    assert make_inbox_table(md, "orders_inbox").name == "orders_inbox"
    assert make_inbox_table(md, name="other", schema="s").fullname == "s.other"
    with pytest.raises(ConfigurationError, match="a name or a prefix, not both"):
        make_inbox_table(md, name="x", prefix="y_")


def test_the_default_tables_are_made_on_txmq_metadata_when_first_asked_for() -> None:
    assert txmq.metadata is metadata
    assert default_inbox_table() is default_inbox_table()
    assert metadata.tables["txmq_inbox"] is default_inbox_table()
    outbox = default_outbox_tables()
    assert isinstance(outbox, OutboxTables)
    assert (outbox.records.name, outbox.markers.name) == ("txmq_outbox", "txmq_tx_marker")
    assert default_outbox_tables() == outbox


def test_the_notify_trigger_of_an_outbox_in_a_schema_names_its_table_qualified() -> None:
    function, on_insert, on_update = notify_ddl("shop_outbox", schema="billing")
    assert function.startswith("CREATE OR REPLACE FUNCTION billing.shop_outbox_notify()")
    assert on_insert.startswith("CREATE TRIGGER shop_outbox_insert_notify AFTER INSERT")
    assert "ON billing.shop_outbox REFERENCING" in on_insert
    assert on_update.endswith("EXECUTE FUNCTION billing.shop_outbox_notify()")
    assert "ON shop_outbox REFERENCING" in notify_ddl("shop_outbox")[1]


def test_create_schema_and_the_default_tables_on_sqlite(engine: Engine) -> None:
    txmq.create_schema(engine)
    with engine.connect() as connection:
        for table in each_table([default_outbox_tables(), default_inbox_table()]):
            assert connection.execute(select(table)).all() == []


def test_the_table_module_is_a_leaf_and_the_sql_layer_imports_no_higher_layer() -> None:
    """``txmq.sql.tables`` imports SQLAlchemy and txmq's value modules only, and no module
    of ``txmq.sql`` imports the outbox, the consumer or the adapters (at any depth of its
    code, lazy imports included), so that neither can form an import circle with it."""

    def imported(path: Path) -> set[str]:
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        return names

    leaf = {n for n in imported(SQL_PACKAGE / "tables.py") if n.split(".")[0] == "txmq"}
    assert leaf <= {"txmq.errors", "txmq.states", "txmq.message"}, leaf
    for module in SQL_PACKAGE.glob("*.py"):
        higher = {
            n
            for n in imported(module)
            if n.split(".")[:2] in (["txmq", "outbox"], ["txmq", "consumer"], ["txmq", "adapters"])
        }
        assert not higher, (module.name, higher)


# -- the strategies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sa_dialect", "skip_locked", "direct"),
    [
        (sqlite.dialect(), False, False),
        (mysql.dialect(), True, False),
        (postgresql.dialect(paramstyle="pyformat"), True, True),
        (postgresql.dialect(paramstyle="format"), True, True),
        (postgresql.dialect(paramstyle="numeric_dollar"), True, False),  # asyncpg's
    ],
    ids=["sqlite", "mysql", "pg-pyformat", "pg-format", "pg-numeric"],
)
def test_each_dialect_gets_its_strategy(
    sa_dialect: Dialect, skip_locked: bool, direct: bool
) -> None:
    strategy = dialect_of(sa_dialect)
    assert (strategy.name, strategy.skip_locked, strategy.direct_cursor) == (
        sa_dialect.name,
        skip_locked,
        direct,
    )


def test_an_unknown_dialect_gets_the_generic_strategy() -> None:
    class Other(sqlite.dialect):  # type: ignore[misc,name-defined]
        name = "otherdb"

    strategy = dialect_of(Other())
    assert type(strategy) is SqlDialect
    assert not strategy.skip_locked
    assert not strategy.direct_cursor


def _sql(statement: object, sa_dialect: Dialect) -> str:
    return str(statement.compile(dialect=sa_dialect))  # type: ignore[attr-defined]


def test_claims_skip_locked_rows_where_the_database_has_row_locks(keyed: Table) -> None:
    query = select(keyed.c.k)
    pg, my, lite = postgresql.dialect(), mysql.dialect(), sqlite.dialect()
    assert _sql(dialect_of(pg).claim_lock(query), pg).endswith("FOR UPDATE SKIP LOCKED")
    assert _sql(dialect_of(my).claim_lock(query), my).endswith("FOR UPDATE SKIP LOCKED")
    assert _sql(dialect_of(pg).row_lock(query), pg).endswith("FOR UPDATE")
    assert "FOR UPDATE" not in _sql(dialect_of(lite).claim_lock(query), lite)
    assert "FOR UPDATE" not in _sql(dialect_of(lite).row_lock(query), lite)


def test_a_list_of_values_is_one_array_parameter_on_postgresql(
    engine: Engine, keyed: Table
) -> None:
    pg = postgresql.dialect()
    assert "= ANY (%(ks)s" in _sql(
        select(keyed).where(dialect_of(pg).in_values(keyed.c.k, "ks")), pg
    )
    lite = dialect_of(engine.dialect)
    with engine.begin() as connection:
        connection.execute(insert(keyed), [{"k": k, "v": "x"} for k in "abc"])
        query = select(keyed.c.k).where(lite.in_values(keyed.c.k, "ks")).order_by(keyed.c.k)
        assert connection.execute(query, {"ks": ["a", "c", "z"]}).scalars().all() == ["a", "c"]


# -- insert, or detect a duplicate -------------------------------------------------------


@pytest.fixture(params=["on-conflict", "savepoint"])
def unique(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, keyed: Table
) -> UniqueInsert:
    """On SQLite: its ON CONFLICT, or the savepoint path of databases without one."""
    if request.param == "savepoint":
        monkeypatch.setattr(sql_dialect, "dialect_of", lambda _: SqlDialect("sqlite"))
    return UniqueInsert(keyed, key=keyed.c.k, columns=("k", "v", "n"))


def test_a_duplicate_is_told_apart_and_the_transaction_goes_on(
    engine: Engine, keyed: Table, unique: UniqueInsert
) -> None:
    with engine.begin() as connection:
        assert unique.one(connection, {"k": "a", "v": "first", "n": 1})
        assert not unique.one(connection, {"k": "a", "v": "second", "n": 2})
        assert unique.one(connection, {"k": "b", "v": "third", "n": None})
    with engine.connect() as connection:
        rows = connection.execute(select(keyed.c.k, keyed.c.v).order_by(keyed.c.k)).all()
    assert [tuple(r) for r in rows] == [("a", "first"), ("b", "third")]


def test_many_rows_answer_the_keys_that_were_new(
    engine: Engine, keyed: Table, unique: UniqueInsert
) -> None:
    with engine.begin() as connection:
        assert unique.one(connection, {"k": "a", "v": "old", "n": None})
        new = unique.many(
            connection,
            [{"k": "a", "v": "x"}, {"k": "b", "v": "y"}, {"k": "c", "v": "z"}],
            shared={"n": 7},
        )
        assert new == {"b", "c"}
        assert unique.many(connection, []) == set()
    with engine.connect() as connection:
        rows = connection.execute(select(keyed).order_by(keyed.c.k)).all()
    assert [tuple(r) for r in rows] == [("a", "old", None), ("b", "y", 7), ("c", "z", 7)]


# -- the direct-cursor statement and the waiter on SQLite ------------------------------------


def test_a_direct_statement_runs_through_sqlalchemy_where_there_is_no_direct_path(
    engine: Engine, keyed: Table
) -> None:
    """On SQLite it is an ordinary execution: engine events see it."""
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    statement = DirectStatement(insert(keyed), column_keys=("k", "v"))
    with engine.begin() as connection:
        assert statement.run(connection, {"k": "a", "v": "x"}) is None
        assert statement.run(connection, [{"k": "b", "v": "y"}, {"k": "c", "v": "z"}]) is None
        rows = DirectStatement(select(keyed.c.k).order_by(keyed.c.k)).run(connection, {})
    assert [tuple(r) for r in rows or ()] == [("a",), ("b",), ("c",)]
    assert sum("INSERT INTO keyed" in s for s in seen) == 2


def test_the_waiter_without_notifications_sleeps_until_stopped(engine: Engine) -> None:
    stop = threading.Event()
    waiter = dialect_of(engine.dialect).waiter(engine, stop)
    waiter.wait(0.01)  # returns: the time is up
    done = threading.Event()
    thread = threading.Thread(target=lambda: (waiter.wait(600), done.set()))
    thread.start()
    stop.set()
    thread.join(timeout=30)
    assert done.is_set()
    waiter.close()
