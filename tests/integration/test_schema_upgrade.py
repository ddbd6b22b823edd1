"""Outbox tables made before delayed messages (no ``deliver_at`` column, no ``_delayed`` and
``_cancelled`` indexes): a clear SchemaMissing naming the column and its DDL, and
``txmq schema upgrade`` adding them, on PostgreSQL and SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, create_engine, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

import txmq
from txmq.cli.root import app
from txmq.outbox import Producer, make_outbox_tables

pytestmark = pytest.mark.database


@dataclass
class Old:
    """A database with outbox tables as an earlier txmq made them, under ``prefix``."""

    url: str
    engine: Engine
    prefix: str
    tables: txmq.OutboxTables

    def cli(self, *args: str) -> tuple[int, str, str]:
        options = ["--database", self.url, "--prefix", self.prefix, "--inbox", f"{self.prefix}in"]
        result = CliRunner().invoke(app, ["schema", *args, *options])
        return result.exit_code, result.stdout, result.stderr

    def producer(self) -> Producer:
        return Producer(group="g", engine=self.engine, broker="memory://", tables=self.tables)


@pytest.fixture(params=["postgresql", "sqlite"])
def old(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Old]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.db'}"
    else:
        url = request.getfixturevalue("database_url")
    prefix = f"u{uuid.uuid4().hex[:8]}_"
    engine = create_engine(url)
    metadata = MetaData()
    tables = make_outbox_tables(metadata, prefix=prefix)
    txmq.make_inbox_table(metadata, f"{prefix}in")
    metadata.create_all(engine)
    with engine.begin() as connection:
        for index in ("delayed", "cancelled"):
            connection.execute(text(f"DROP INDEX ix_{prefix}outbox_{index}"))
        connection.execute(text(f"ALTER TABLE {prefix}outbox DROP COLUMN deliver_at"))
    yield Old(url, engine, prefix, tables)
    metadata.drop_all(engine)
    engine.dispose()


def test_an_old_outbox_is_named_with_the_ddl_that_upgrades_it(old: Old) -> None:
    producer = old.producer()
    with pytest.raises(txmq.SchemaMissing) as raised:
        producer.relay().connect()
    message = str(raised.value)
    assert f"ALTER TABLE {old.prefix}outbox ADD COLUMN deliver_at" in message
    assert "txmq schema upgrade" in message
    # Staging a delayed message says so too, and the caller's transaction writes nothing.
    with (
        pytest.raises(txmq.SchemaMissing, match="txmq schema upgrade"),
        Session(old.engine) as session,
        session.begin(),
    ):
        producer.stage(session, txmq.Message("t", b"later"), delay=60)
    assert producer.store.counts() == {}


def test_schema_upgrade_adds_the_column_and_indexes_additively(old: Old) -> None:
    code, output, _ = old.cli("check")
    assert code == 1
    assert f"{old.prefix}outbox: missing column deliver_at" in output.splitlines()
    code, dry, _ = old.cli("upgrade", "--dry-run")
    assert code == 0
    assert [line.split(" ")[0:2] for line in dry.splitlines()] == [
        ["ALTER", "TABLE"],
        ["CREATE", "INDEX"],
        ["CREATE", "INDEX"],
    ]
    assert old.cli("check")[0] == 1  # a dry run changes nothing
    code, output, _ = old.cli("upgrade")
    assert (code, output) == (0, dry)
    assert old.cli("check")[0] == 0
    assert old.cli("upgrade")[1] == ""  # nothing left to do
    producer = old.producer()
    producer.relay().connect()
    with Session(old.engine) as session, session.begin():
        producer.stage(session, txmq.Message("t", b"later"), delay=60)
    assert producer.store.counts() == {"DELAYED": 1}
