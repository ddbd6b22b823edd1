"""``txmq schema create|check|upgrade``: create txmq's tables where they do not exist yet,
compare the database with them, or add what a newer txmq needs to existing ones."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import MetaData
from sqlalchemy.exc import SQLAlchemyError

from txmq.config import ENV_DATABASE_URL, database_url, redact
from txmq.database import open_engine
from txmq.errors import TxmqError
from txmq.sql.schema import create_schema, upgrade_schema, upgrade_statements
from txmq.sql.tables import DEFAULT_INBOX_TABLE, make_inbox_table, make_outbox_tables

app = typer.Typer(help="Create txmq's tables, or check them.", no_args_is_help=True)

#: ``txmq schema check``'s exit code when the database cannot be reached or inspected
#: (1 means it was, and differs).
EXIT_UNCHECKED = 2


@app.command()
def create(
    database: Annotated[
        str | None,
        typer.Option("--database", envvar=ENV_DATABASE_URL, help="SQLAlchemy URL."),
    ] = None,
    prefix: Annotated[str, typer.Option(help="Table name prefix of the outbox tables.")] = "txmq_",
    inbox: Annotated[str, typer.Option(help="Name of the inbox table.")] = DEFAULT_INBOX_TABLE,
) -> None:
    """Create the outbox, transaction-marker and inbox tables (idempotent)."""
    metadata = MetaData()
    try:
        engine = open_engine(database_url(database))
        create_schema(
            engine, make_outbox_tables(metadata, prefix=prefix), make_inbox_table(metadata, inbox)
        )
    except (TxmqError, SQLAlchemyError) as exc:
        typer.echo(f"error: {redact(str(exc)).splitlines()[0]}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"txmq's tables exist in {engine.url.render_as_string(hide_password=True)}")


@app.command()
def check(
    database: Annotated[
        str | None,
        typer.Option("--database", envvar=ENV_DATABASE_URL, help="SQLAlchemy URL."),
    ] = None,
    prefix: Annotated[str, typer.Option(help="Table name prefix of the outbox tables.")] = "txmq_",
    inbox: Annotated[str, typer.Option(help="Name of the inbox table.")] = DEFAULT_INBOX_TABLE,
) -> None:
    """Compare the database with txmq's tables, indexes and NOTIFY trigger; print each
    difference. Exit 0: they match; 1: they differ; 2: the database cannot be inspected."""
    from txmq.schema_check import schema_differences

    metadata = MetaData()
    try:
        engine = open_engine(database_url(database))
        differences = schema_differences(
            engine, [make_outbox_tables(metadata, prefix=prefix), make_inbox_table(metadata, inbox)]
        )
    except (TxmqError, SQLAlchemyError) as exc:
        typer.echo(f"error: {redact(str(exc)).splitlines()[0]}", err=True)
        raise typer.Exit(code=EXIT_UNCHECKED) from None
    where = engine.url.render_as_string(hide_password=True)
    for line in differences:
        typer.echo(line)
    if differences:
        typer.echo(
            f"{len(differences)} difference(s) from txmq's schema in {where}; "
            "`txmq schema create` adds missing tables, `txmq schema upgrade` missing columns "
            "and indexes of existing ones (not triggers)",
            err=True,
        )
        raise typer.Exit(code=1)
    typer.echo(f"txmq's schema matches in {where}")


@app.command()
def upgrade(
    database: Annotated[
        str | None,
        typer.Option("--database", envvar=ENV_DATABASE_URL, help="SQLAlchemy URL."),
    ] = None,
    prefix: Annotated[str, typer.Option(help="Table name prefix of the outbox tables.")] = "txmq_",
    inbox: Annotated[str, typer.Option(help="Name of the inbox table.")] = DEFAULT_INBOX_TABLE,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the DDL (for your migrations); run none.")
    ] = False,
) -> None:
    """Add the missing nullable columns and indexes of existing txmq tables (additive: it
    drops and alters nothing; e.g. ``deliver_at`` of delayed messages), printing each
    statement. Tables that do not exist are left to ``txmq schema create``."""
    metadata = MetaData()
    tables = (make_outbox_tables(metadata, prefix=prefix), make_inbox_table(metadata, inbox))
    try:
        engine = open_engine(database_url(database))
        run = upgrade_statements if dry_run else upgrade_schema
        statements = run(engine, *tables)
    except (TxmqError, SQLAlchemyError) as exc:
        typer.echo(f"error: {redact(str(exc)).splitlines()[0]}", err=True)
        raise typer.Exit(code=1) from None
    for statement in statements:
        typer.echo(f"{statement};")
    where = engine.url.render_as_string(hide_password=True)
    if not statements:
        typer.echo(f"txmq's tables in {where} need no upgrade", err=True)
    elif not dry_run:
        typer.echo(f"{len(statements)} statement(s) run in {where}", err=True)
