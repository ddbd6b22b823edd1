"""The ``txmq`` command: a small root that mounts one sub-command group per concern."""

from __future__ import annotations

from typing import Annotated

import typer

from txmq.config import ENV_BROKER_URL, ENV_DATABASE_URL
from txmq.consumer.cli import dlq_app
from txmq.doctor import doctor
from txmq.outbox.cli import app as outbox_app
from txmq.process.cli import consume, worker
from txmq.schema_cli import app as schema_app
from txmq.testing.provision.cli import app as brokers_app
from txmq.unroutable import app as unroutable_app

app = typer.Typer(
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


app.add_typer(brokers_app, name="brokers")
app.add_typer(outbox_app, name="outbox")
app.add_typer(dlq_app, name="dlq")
app.add_typer(schema_app, name="schema")
app.add_typer(unroutable_app, name="unroutable")
app.command()(worker)
app.command()(consume)
app.command()(doctor)


@app.command()
def demo(
    broker: Annotated[
        list[str] | None,
        typer.Option(envvar=ENV_BROKER_URL, help="Broker URL; repeat to run on several."),
    ] = None,
    database: Annotated[
        str | None, typer.Option(envvar=ENV_DATABASE_URL, help="SQLAlchemy URL.")
    ] = None,
) -> None:
    """Run the bank-transfer demo on each broker; fail unless the books balance."""
    from txmq.demo import main as run_demo

    urls: list[str | None] = list(broker) if broker else [None]
    if not all([run_demo(url, database) for url in urls]):
        raise typer.Exit(code=1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
