"""``txmq schema check``: a database that matches txmq's schema passes (exit 0); a missing
table, index or (PostgreSQL) NOTIFY trigger is printed and exits 1."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, create_engine, text
from typer.testing import CliRunner

import txmq
from txmq.cli.root import app
from txmq.consumer import make_inbox_table
from txmq.outbox import make_outbox_tables
from txmq.schema_check import schema_differences

pytestmark = pytest.mark.database


@dataclass
class Checked:
    """A database with txmq's tables under a unique ``prefix`` (outbox) and ``inbox`` name."""

    url: str
    engine: Engine
    prefix: str
    inbox: str

    def check(self) -> tuple[int, str]:
        options = ["--database", self.url, "--prefix", self.prefix, "--inbox", self.inbox]
        result = CliRunner().invoke(app, ["schema", "check", *options])
        return result.exit_code, result.stdout

    def execute(self, statement: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(statement))


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Checked]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.db'}"
    else:
        url = request.getfixturevalue("database_url")
    prefix = f"c{uuid.uuid4().hex[:8]}_"
    engine = create_engine(url)
    metadata = MetaData()
    outbox = make_outbox_tables(metadata, prefix=prefix)
    inbox = make_inbox_table(metadata, f"{prefix}inbox")
    txmq.create_schema(engine, outbox, inbox)
    yield Checked(url, engine, prefix, inbox.name)
    metadata.drop_all(engine, checkfirst=True)
    engine.dispose()


def test_a_fresh_schema_matches(db: Checked) -> None:
    code, output = db.check()
    assert (code, output) == (0, f"txmq's schema matches in {db.engine.url}\n")


def test_a_missing_index_is_reported(db: Checked) -> None:
    db.execute(f"DROP INDEX ix_{db.prefix}outbox_ready")
    code, output = db.check()
    assert code == 1
    assert output.splitlines() == [
        f"{db.prefix}outbox: missing index ix_{db.prefix}outbox_ready (producer_group, seq)"
    ]


def test_a_missing_table_is_reported(db: Checked) -> None:
    db.execute(f"DROP TABLE {db.inbox}")
    code, output = db.check()
    assert code == 1
    assert output.splitlines() == [f"{db.inbox}: missing table"]


def test_a_missing_column_is_reported(db: Checked) -> None:
    db.execute(f"ALTER TABLE {db.prefix}outbox DROP COLUMN last_error")
    code, output = db.check()
    assert code == 1
    assert output.splitlines() == [f"{db.prefix}outbox: missing column last_error"]


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # the only one with the trigger
def test_a_missing_notify_trigger_is_reported_on_postgresql(db: Checked) -> None:
    db.execute(f"DROP TRIGGER {db.prefix}outbox_insert_notify ON {db.prefix}outbox")
    code, output = db.check()
    assert code == 1
    assert output.splitlines() == [
        f"{db.prefix}outbox: missing trigger {db.prefix}outbox_insert_notify (NOTIFY of READY rows)"
    ]


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_tables_given_once_through_are_checked_for_the_trigger_too(db: Checked) -> None:
    """``schema_differences`` reads its ``tables`` once: a generator is checked like a list."""
    db.execute(f"DROP TRIGGER {db.prefix}outbox_update_notify ON {db.prefix}outbox")
    outbox = make_outbox_tables(MetaData(), prefix=db.prefix)
    assert schema_differences(db.engine, (tables for tables in [outbox])) == [
        f"{db.prefix}outbox: missing trigger {db.prefix}outbox_update_notify (NOTIFY of READY rows)"
    ]


def test_an_unreachable_database_exits_2_without_its_password() -> None:
    url = "postgresql+psycopg://txmq:s3cret-pw@127.0.0.1:1/nowhere"
    result = CliRunner().invoke(app, ["schema", "check", "--database", url])
    assert result.exit_code == 2
    assert result.output.startswith("error: ")
    assert "s3cret-pw" not in result.output
