"""``txmq doctor``: run the deployment checks of :mod:`txmq.doctor`, one line per check,
and exit with the first problem's code."""

from __future__ import annotations

from typing import Annotated

import typer

from txmq.config import ENV_BROKER_URL, ENV_DATABASE_URL, database_url, redact
from txmq.database import open_engine
from txmq.doctor import Problem, examine_broker, examine_database
from txmq.errors import TxmqError
from txmq.sql.tables import DEFAULT_INBOX_TABLE


def doctor(
    broker: Annotated[
        str | None, typer.Option("--broker", envvar=ENV_BROKER_URL, help="Broker URL.")
    ] = None,
    database: Annotated[
        str | None, typer.Option("--database", envvar=ENV_DATABASE_URL, help="SQLAlchemy URL.")
    ] = None,
    prefix: Annotated[str, typer.Option(help="Table name prefix of the outbox tables.")] = "txmq_",
    inbox: Annotated[str, typer.Option(help="Name of the inbox table.")] = DEFAULT_INBOX_TABLE,
) -> None:
    """Check the database, txmq's schema, the clocks and the broker; one line per check.

    Exit 0 when all pass, else the first problem's code: 3 database unreachable, 4 database
    refused the credentials, 5 schema missing or different, 6 clock skew, 7 broker
    unreachable, 8 broker refused the credentials, 9 broker topology; 2 bad configuration
    (a malformed URL, a missing driver).
    """
    try:
        engine = open_engine(database_url(database))
        findings = examine_database(engine, prefix=prefix, inbox=inbox)
        engine.dispose()
        findings += examine_broker(broker)
    except TxmqError as exc:  # a malformed URL, a missing driver
        typer.echo(f"error: {redact(str(exc)).splitlines()[0]}", err=True)
        raise typer.Exit(code=Problem.CONFIGURATION) from None
    for finding in findings:
        mark = "ok  " if finding.ok else "FAIL"
        typer.echo(f"{mark} {finding.check}: {redact(finding.detail)}")
    problems = [finding.problem for finding in findings if not finding.ok]
    if problems:
        raise typer.Exit(code=problems[0])
