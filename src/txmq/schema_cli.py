"""``txmq schema create``: create txmq's tables in a database, where they do not exist yet."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import MetaData
from sqlalchemy.exc import SQLAlchemyError

from txmq.config import ENV_DATABASE_URL, database_url, redact
from txmq.consumer.tables import DEFAULT_INBOX_TABLE, make_inbox_table
from txmq.database import open_engine
from txmq.errors import TxmqError
from txmq.outbox.tables import make_outbox_tables
from txmq.schema import create_schema

app = typer.Typer(help="Create txmq's tables.", no_args_is_help=True)


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
