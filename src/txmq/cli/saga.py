"""``txmq saga ...``: list and show saga instances, retry a parked one, abort a running one.

Orchestrated sagas are read from the orchestrator's saga table; ``show`` falls back to the
choreography tracker's event table for an id the saga table does not know.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from sqlalchemy import Engine, MetaData
from sqlalchemy.exc import SQLAlchemyError

from txmq.config import ENV_DATABASE_URL, database_url, redact
from txmq.database import open_engine
from txmq.errors import SagaNotFound, TxmqError
from txmq.saga import (
    SagaInstance,
    SagaState,
    SagaStore,
    abort_saga,
    make_saga_event_table,
    make_saga_table,
    retry_saga,
)
from txmq.saga.tracker import progress_of

app = typer.Typer(help="List, show, retry and abort sagas.")

DatabaseOption = Annotated[
    str | None,
    typer.Option("--database", envvar=ENV_DATABASE_URL, help="SQLAlchemy URL of the sagas."),
]
PrefixOption = Annotated[str, typer.Option(help="Table name prefix of the saga tables.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _run(command: Callable[..., None]) -> Callable[..., None]:
    """Report txmq and database errors as one clear line and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except (TxmqError, SQLAlchemyError) as exc:
            typer.echo(f"error: {redact(str(exc)).splitlines()[0]}", err=True)
            raise typer.Exit(code=1) from None

    return wrapper


def _engine(database: str | None) -> Engine:
    return open_engine(database_url(database))


def _line(instance: SagaInstance) -> str:
    error = f"  {instance.last_error}" if instance.last_error else ""
    return (
        f"{instance.id}  {instance.saga_name}  {instance.state.value}  "
        f"step={instance.step_index} {instance.op} attempt={instance.attempt}  "
        f"updated={instance.updated_at:%Y-%m-%d %H:%M:%S}{error}"
    )


@app.command(name="list")
@_run
def list_sagas(
    *,
    state: Annotated[
        list[SagaState] | None,
        typer.Option(case_sensitive=False, help="Only sagas in this state (repeatable)."),
    ] = None,
    saga: Annotated[str | None, typer.Option(help="Only sagas of this name.")] = None,
    limit: int = 50,
    database: DatabaseOption = None,
    prefix: PrefixOption = "txmq_",
    as_json: JsonOption = False,
) -> None:
    """List orchestrated saga instances, most recently updated first.

    ``--json`` prints one object per line. An empty listing says so on stderr.
    """
    store = SagaStore(_engine(database), make_saga_table(MetaData(), prefix=prefix))
    found = store.list(states=state or (), saga_name=saga, limit=limit)
    for instance in found:
        typer.echo(json.dumps(instance.as_json()) if as_json else _line(instance))
    if not found:
        typer.echo("no sagas", err=True)


@app.command()
@_run
def show(
    saga_id: str,
    database: DatabaseOption = None,
    prefix: PrefixOption = "txmq_",
    as_json: JsonOption = False,
) -> None:
    """Show one saga: an orchestrated instance with its history, or, for a choreographed
    saga, the events the tracker saw. Exit status 1 if neither knows the id."""
    engine = _engine(database)
    metadata = MetaData()
    instance = SagaStore(engine, make_saga_table(metadata, prefix=prefix)).get(saga_id)
    if instance is not None:
        if as_json:
            typer.echo(json.dumps(instance.as_json()))
            return
        typer.echo(_line(instance))
        for entry in instance.history:
            extra = {k: v for k, v in entry.items() if k not in ("at", "step", "op", "event")}
            details = "  " + json.dumps(extra) if extra else ""
            typer.echo(f"  {entry['at']}  {entry['step']} {entry['op']}: {entry['event']}{details}")
        return
    progress = progress_of(engine, make_saga_event_table(metadata, prefix=prefix), saga_id)
    if progress is None:
        raise SagaNotFound(f"no saga {saga_id!r}")
    if as_json:
        typer.echo(json.dumps(progress.as_json()))
        return
    typer.echo(f"{progress.saga_id}  {progress.saga_name}  (choreographed; from its events)")
    for event in progress.events:
        typer.echo(f"  {event.seen_at.isoformat()}  {event.topic}  {json.dumps(event.data)}")


@app.command()
@_run
def retry(
    saga_id: str,
    database: DatabaseOption = None,
    prefix: PrefixOption = "txmq_",
    as_json: JsonOption = False,
) -> None:
    """Send a PARKED saga's compensation again (the orchestrator does it at its next pass)."""
    instance = retry_saga(_engine(database), make_saga_table(MetaData(), prefix=prefix), saga_id)
    typer.echo(json.dumps(instance.as_json()) if as_json else _line(instance))


@app.command()
@_run
def abort(
    saga_id: str,
    database: DatabaseOption = None,
    prefix: PrefixOption = "txmq_",
    as_json: JsonOption = False,
) -> None:
    """Compensate a RUNNING or PARKED saga from its current step backwards (the orchestrator
    does it at its next pass)."""
    instance = abort_saga(_engine(database), make_saga_table(MetaData(), prefix=prefix), saga_id)
    typer.echo(json.dumps(instance.as_json()) if as_json else _line(instance))
