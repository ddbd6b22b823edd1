"""``txmq unroutable list|reroute``: messages held because no queue was bound for their
topic (see :mod:`txmq.unroutable`)."""

from __future__ import annotations

from typing import Annotated

import typer

from txmq.adapters import Adapter, connect
from txmq.config import ENV_BROKER_URL, redact
from txmq.errors import TxmqError
from txmq.unroutable import held, reroute

app = typer.Typer(
    help="Messages held because no queue was bound for their topic (RabbitMQ).",
    no_args_is_help=True,
)
BrokerOption = Annotated[
    str | None, typer.Option("--broker", envvar=ENV_BROKER_URL, help="Broker URL.")
]


def _connect(url: str | None) -> Adapter:
    try:
        return connect(url)
    except TxmqError as exc:
        typer.echo(f"error: {redact(str(exc))}", err=True)
        raise typer.Exit(code=1) from None


@app.command(name="list")
def list_held(broker: BrokerOption = None, limit: int = 100) -> None:
    """List held messages: id, topic, key, size."""
    adapter = _connect(broker)
    try:
        messages = held(adapter, limit=limit)
    except TxmqError as exc:
        typer.echo(f"error: {redact(str(exc))}", err=True)
        raise typer.Exit(code=1) from None
    finally:
        adapter.close()
    for message in messages:
        typer.echo(f"{message.id}  {message.topic}  key={message.key}  {len(message.body)} B")
    typer.echo(f"{len(messages)} message(s) held")


@app.command(name="reroute")
def reroute_held(
    broker: BrokerOption = None,
    topic: Annotated[
        list[str] | None, typer.Option("--topic", help="Only this topic; repeatable.")
    ] = None,
) -> None:
    """Publish held messages to their topics again (those still unbound stay held)."""
    adapter = _connect(broker)
    try:
        moved = reroute(adapter, topic or None)
    except TxmqError as exc:
        typer.echo(f"error: {redact(str(exc))}", err=True)
        raise typer.Exit(code=1) from None
    finally:
        adapter.close()
    typer.echo(f"re-routed {moved} message(s)")
