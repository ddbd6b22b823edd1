"""The ``txmq`` command: a small root that mounts one sub-command group per concern.

``txmq brokers`` runs the test provisioning (:mod:`txmq.testing.provision`, docker,
testcontainers): it is listed by ``txmq --help`` but imported only when it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from txmq.cli.chaos import chaos
from txmq.cli.dlq import dlq_app
from txmq.cli.doctor import doctor
from txmq.cli.outbox import app as outbox_app
from txmq.cli.process import consume, worker
from txmq.cli.schema import app as schema_app
from txmq.cli.unroutable import app as unroutable_app

if TYPE_CHECKING:
    # typer's own copy of click, named by typer's signatures and nowhere else.
    from typer._click import Command, Context

#: Sub-command groups imported only when they run: name -> (module, its typer app, help).
LAZY_GROUPS = {
    "brokers": (
        "txmq.cli.brokers",
        "app",
        "Start, stop and list RabbitMQ, Kafka, PostgreSQL and MariaDB for tests.",
    ),
    "saga": ("txmq.cli.saga", "app", "List, show, retry and abort sagas."),
}


class _LazyRoot(TyperGroup):
    """The root group: lists a lazy group by a placeholder carrying its help, and imports
    it when a command line resolves to it (help, completion and running alike)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        placeholders: dict[str, Command] = {
            name: TyperCommand(name=name, help=text) for name, (_, _, text) in LAZY_GROUPS.items()
        }
        self._placeholders = placeholders
        # Listed where typer lists groups: after the commands, before the other groups.
        commands = {n: c for n, c in self.commands.items() if not isinstance(c, TyperGroup)}
        groups = {n: c for n, c in self.commands.items() if isinstance(c, TyperGroup)}
        self.commands = {**commands, **placeholders, **groups}

    def resolve_command(
        self, ctx: Context, args: list[str]
    ) -> tuple[str | None, Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name is not None and command is self._placeholders.get(name):
            module, attribute, text = LAZY_GROUPS[name]
            loaded = typer.main.get_command(getattr(importlib.import_module(module), attribute))
            loaded.name, loaded.help = name, text
            self.commands[name] = command = loaded
        return name, command, rest


app = typer.Typer(
    cls=_LazyRoot,
    help="txmq: transactional messages on RabbitMQ and Kafka.",
    no_args_is_help=True,
    # A traceback's local variables may hold URLs with passwords: never print them.
    pretty_exceptions_show_locals=False,
)


def _print_version(requested: bool) -> None:
    if requested:
        from importlib.metadata import version

        typer.echo(f"txmq {version('txmq')}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print txmq's version and exit.",
        ),
    ] = False,
) -> None:
    """txmq: transactional messages on RabbitMQ and Kafka."""


app.add_typer(outbox_app, name="outbox")
app.add_typer(dlq_app, name="dlq")
app.add_typer(schema_app, name="schema")
app.add_typer(unroutable_app, name="unroutable")
app.command()(worker)
app.command()(consume)
app.command()(doctor)
app.command()(chaos)


@app.command()
def demo(
    flow: Annotated[
        str | None,
        typer.Argument(
            help="'saga': the order saga, orchestrated and choreographed, with its invariant "
            "report (needs --broker); none: every flow of txmq.",
        ),
    ] = None,
    *,
    broker: Annotated[
        list[str] | None,
        typer.Option(
            help="Broker URL; repeat to run on several (default: RabbitMQ and Kafka as "
            "'txmq brokers up' runs them, started and stopped here if not running).",
        ),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            help="SQLAlchemy URL (default: a SQLite file in a temporary directory; "
            "TXMQ_DATABASE_URL is not read, so a demo never lands on a real database).",
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON document (database, brokers, scenarios, passed) "
            "instead of the report.",
        ),
    ] = False,
    crash: Annotated[
        bool,
        typer.Option(
            "--crash",
            help="Instead: make transfers while the worker and then the consumer are "
            "SIGKILLed midway and started again, and check nothing was lost or applied "
            "twice. Needs PostgreSQL; without --broker / --database it starts a private "
            "RabbitMQ, Kafka and PostgreSQL as processes (--broker rabbitmq|kafka: one).",
        ),
    ] = False,
    seed: Annotated[
        int | None, typer.Option(help="With --crash: replay a run (the same moments).")
    ] = None,
) -> None:
    """Run every txmq flow on each broker, each checked; exit 1 unless all pass."""
    if flow == "saga":
        from txmq.saga.demo import run as run_saga

        if not broker:
            typer.echo("error: txmq demo saga needs --broker URL (repeatable)", err=True)
            raise typer.Exit(2)
        raise typer.Exit(run_saga(broker, database, as_json=as_json))
    if flow is not None:
        typer.echo(f"error: unknown demo {flow!r}; try 'saga'", err=True)
        raise typer.Exit(2)
    from txmq.demo import run, run_crash

    if crash:
        raise typer.Exit(run_crash(broker, database, as_json=as_json, seed=seed))
    raise typer.Exit(run(broker, database, as_json=as_json))
