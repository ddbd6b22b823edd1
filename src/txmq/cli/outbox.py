"""``txmq outbox ...``: look at the outbox, decide parked records, run a relay."""

from __future__ import annotations

import functools
import json
import logging
import signal
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

import typer
from sqlalchemy import MetaData
from sqlalchemy.exc import SQLAlchemyError

from txmq.adapters import connect
from txmq.cli.progress import progress
from txmq.config import ENV_BROKER_URL, ENV_DATABASE_URL, database_url, describe, redact
from txmq.database import open_engine
from txmq.errors import TxmqError
from txmq.outbox.relay import Relay
from txmq.outbox.store import OutboxRecord, OutboxStore
from txmq.sql.tables import make_outbox_tables
from txmq.states import RecordState

#: How often ``txmq outbox relay`` looks at its lanes' health.
HEALTH_CHECK_INTERVAL = 0.5

app = typer.Typer(help="Inspect the outbox, decide parked half messages, run a relay.")

DatabaseOption = Annotated[
    str | None,
    typer.Option("--database", envvar=ENV_DATABASE_URL, help="SQLAlchemy URL of the outbox."),
]
PrefixOption = Annotated[str, typer.Option(help="Table name prefix of the outbox tables.")]
GroupsOption = Annotated[
    list[str] | None,
    typer.Option("--group", help="Only this producer group (repeatable; default: every group)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _store(database: str | None, prefix: str) -> OutboxStore:
    engine = open_engine(database_url(database))
    return OutboxStore(engine, make_outbox_tables(MetaData(), prefix=prefix))


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {redact(str(exc)).splitlines()[0]}", err=True)
    return typer.Exit(code=1)


def _run(command: Callable[..., None]) -> Callable[..., None]:
    """Report txmq and database errors as one clear line and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except (TxmqError, SQLAlchemyError) as exc:
            raise _fail(exc) from None

    return wrapper


@app.command()
@_run
def status(
    group: GroupsOption = None,
    database: DatabaseOption = None,
    prefix: PrefixOption = "txmq_",
    as_json: JsonOption = False,
) -> None:
    """Count records per state, in all and per producer group.

    ``--json`` prints one object: ``database`` (password hidden), ``states`` (state to
    count, every state) and ``groups`` (group to state to count).
    """
    store = _store(database, prefix)
    found = store.group_counts(group or None)
    per_group = {
        name: {state.value: found.get(name, {}).get(state.value, 0) for state in RecordState}
        for name in sorted(set(found) | set(group or ()))
    }
    totals = {
        state.value: sum(counts[state.value] for counts in per_group.values())
        for state in RecordState
    }
    where = store.engine.url.render_as_string(hide_password=True)
    if as_json:
        typer.echo(json.dumps({"database": where, "states": totals, "groups": per_group}))
        return
    typer.echo(f"outbox in {where}")
    for state, total in totals.items():
        typer.echo(f"  {state:<12} {total}")
    for name, counts in per_group.items():
        typer.echo(f"group {name}: " + " ".join(f"{s}={n}" for s, n in counts.items()))
    if not per_group:
        typer.echo("no records")


@app.command(name="list")
@_run
def list_records(
    *,
    state: Annotated[
        RecordState, typer.Option(case_sensitive=False, help="Which records.")
    ] = RecordState.PARKED,
    group: GroupsOption = None,
    limit: int = 50,
    database: DatabaseOption = None,
    prefix: PrefixOption = "txmq_",
    as_json: JsonOption = False,
) -> None:
    """List records in a state (default: PARKED), oldest first, with their last error.

    ``--json`` prints one object per line. An empty listing says so on stderr.
    """
    records = _store(database, prefix).list(state, groups=group or None, limit=limit)
    for record in records:
        if as_json:
            typer.echo(json.dumps(_record_as_dict(record)))
        else:
            due = (
                "" if record.deliver_at is None else f"due={record.deliver_at:%Y-%m-%d %H:%M:%S}  "
            )
            typer.echo(
                f"{record.message.id}  {record.producer_group}  {record.message.topic}  "
                f"checks={record.check_count}  attempts={record.publish_attempts}  "
                f"created={record.created_at:%Y-%m-%d %H:%M:%S}  {due}"
                f"{record.last_error or ''}".rstrip()
            )
    if not records:
        among = f" in group {', '.join(group)}" if group else ""
        typer.echo(f"no {state.value} records{among}", err=True)


def _record_as_dict(record: OutboxRecord) -> dict[str, Any]:
    def when(moment: datetime | None) -> str | None:
        return None if moment is None else moment.isoformat()

    return {
        "id": record.message.id,
        "group": record.producer_group,
        "topic": record.message.topic,
        "key": record.message.key,
        "state": record.state.value,
        "check_count": record.check_count,
        "publish_attempts": record.publish_attempts,
        "check_after": when(record.check_after),
        "deliver_at": when(record.deliver_at),
        "created_at": when(record.created_at),
        "updated_at": when(record.updated_at),
        "last_error": record.last_error,
    }


def _decide(message_id: str, to: RecordState, database: str | None, prefix: str) -> None:
    store = _store(database, prefix)
    if to is RecordState.PREPARED:
        store.resolve(message_id, to, reset_checks=True)
    else:
        store.resolve(message_id, to, expected=(RecordState.PARKED, RecordState.PREPARED))
    typer.echo(f"{message_id}: {to.value}")


@app.command()
@_run
def resume(
    message_id: str, database: DatabaseOption = None, prefix: PrefixOption = "txmq_"
) -> None:
    """Give a PARKED record a new round of check-backs."""
    _decide(message_id, RecordState.PREPARED, database, prefix)


@app.command()
@_run
def commit(
    message_id: str, database: DatabaseOption = None, prefix: PrefixOption = "txmq_"
) -> None:
    """Decide a PARKED/PREPARED record as committed: it will be published."""
    _decide(message_id, RecordState.READY, database, prefix)


@app.command()
@_run
def rollback(
    message_id: str, database: DatabaseOption = None, prefix: PrefixOption = "txmq_"
) -> None:
    """Decide a PARKED/PREPARED record as rolled back: it is discarded."""
    _decide(message_id, RecordState.ROLLED_BACK, database, prefix)


@app.command()
@_run
def retry(message_id: str, database: DatabaseOption = None, prefix: PrefixOption = "txmq_") -> None:
    """Publish a FAILED record again (READY, publish attempts reset)."""
    _store(database, prefix).retry_failed(message_id)
    typer.echo(f"{message_id}: {RecordState.READY.value}")


@app.command()
@_run
def discard(
    message_id: str, database: DatabaseOption = None, prefix: PrefixOption = "txmq_"
) -> None:
    """Delete a FAILED record: it is never published."""
    _store(database, prefix).discard_failed(message_id)
    typer.echo(f"{message_id}: discarded")


@app.command()
@_run
def purge(
    older_than_hours: Annotated[float, typer.Option(help="Age of SENT/ROLLED_BACK records.")] = 24,
    group: GroupsOption = None,
    database: DatabaseOption = None,
    prefix: PrefixOption = "txmq_",
) -> None:
    """Delete finished (SENT, ROLLED_BACK) records older than the given age."""
    store = _store(database, prefix)
    with progress("purging finished outbox records"):
        purged = store.purge(timedelta(hours=older_than_hours), groups=group or None)
    typer.echo(f"purged {purged} records")


@app.command()
@_run
def relay(
    *,
    broker: Annotated[
        str | None, typer.Option(envvar=ENV_BROKER_URL, help="Broker URL to publish to.")
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option("--group", help="Relay this producer group's records (repeatable)."),
    ] = None,
    all_groups: Annotated[
        bool, typer.Option("--all-groups", help="Relay the records of every producer group.")
    ] = False,
    database: DatabaseOption = None,
    prefix: PrefixOption = "txmq_",
    batch_size: int = 1000,
    instance_id: Annotated[
        str | None, typer.Option(help="Stable relay name (Kafka transactional.id).")
    ] = None,
) -> None:
    """Run a relay of the given producer groups until SIGINT/SIGTERM (exit 0).

    Exits with status 1 and one line on stderr when a relay lane has died or hit an error
    that retrying cannot fix (a database refusing the connection, a configuration error);
    outages of the database or broker are waited out.
    """
    if bool(group) == all_groups:
        typer.echo(
            "error: give the producer groups to relay with --group G (repeatable), or --all-groups",
            err=True,
        )
        raise typer.Exit(code=2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    store = _store(database, prefix)
    # A relay without its tables would fail every pass: say so once, at the door.
    store.check_schema()
    adapter = connect(broker)
    worker = Relay(
        adapter,
        store,
        groups=group or None,
        all_groups=all_groups,
        batch_size=batch_size,
        instance_id=instance_id,
    )
    # What retrying cannot mend (a broker topology declared otherwise, a refused login)
    # fails here, in one line, instead of being backed off forever by the lanes.
    try:
        worker.connect()
    except TxmqError:
        adapter.close()
        raise
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    served = ", ".join(worker.groups) if worker.groups is not None else "every group"
    typer.echo(f"relay {worker.instance_id} ({served}) -> {adapter.settings.redacted_url()}")
    worker.start()
    try:
        while not stopped.wait(HEALTH_CHECK_INTERVAL):
            if dead := worker.health().dead:
                loop = dead[0]
                cause = describe(loop.fatal) if loop.fatal is not None else "stopped"
                typer.echo(f"error: relay {loop.name} stopped: {cause}", err=True)
                raise typer.Exit(code=1)
    finally:
        worker.stop()
        adapter.close()
