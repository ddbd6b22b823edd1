"""``txmq chaos``: the fault-injection suite (see :mod:`txmq.chaos`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from txmq.config import redact
from txmq.errors import TxmqError


def chaos(
    broker: Annotated[
        str | None,
        typer.Option(
            help="Broker URL (used as it is: the faults that need to own it are not run), or "
            "rabbitmq / kafka for a private one; default: a private RabbitMQ, then Kafka.",
        ),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            help="PostgreSQL URL (the database faults are then not run); default: a private one."
        ),
    ] = None,
    schedule: Annotated[str, typer.Option(help="short | long | cluster")] = "short",
    seed: Annotated[
        int | None,
        typer.Option(help="Replay a run: the same seed, the same schedule and workload."),
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write the JSON report to this file.")
    ] = None,
) -> None:
    """Run transfers through every producer mode under injected faults; exit 1 unless every
    invariant held (nothing lost, applied twice, or delivered from a rolled-back transaction)."""
    from txmq.chaos import run

    try:
        code = run(broker, database, schedule=schedule, seed=seed, json_path=json_file)
    except TxmqError as exc:
        typer.echo(f"error: {redact(str(exc))}", err=True)
        raise typer.Exit(code=2) from None
    raise typer.Exit(code=code)
