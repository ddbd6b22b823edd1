"""``txmq unroutable list|reroute``: messages held because no queue was bound for their
topic (see :mod:`txmq.unroutable`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from txmq.adapters import Adapter, connect
from txmq.config import ENV_BROKER_URL, redact
from txmq.errors import TxmqError
from txmq.message import Message
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
def list_held(
    broker: BrokerOption = None,
    limit: int = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List held messages: id, topic, key, size.

    ``--json`` prints one object per line (``id``, ``topic``, ``key``, ``size``,
    ``headers``) and the count on stderr. Kafka holds none (a topic keeps its messages).
    """
    adapter = _connect(broker)
    try:
        messages = held(adapter, limit=limit)
    except TxmqError as exc:
        typer.echo(f"error: {redact(str(exc))}", err=True)
        raise typer.Exit(code=1) from None
    finally:
        adapter.close()
    for message in messages:
        if as_json:
            typer.echo(json.dumps(_as_dict(message)))
        else:
            typer.echo(f"{message.id}  {message.topic}  key={message.key}  {len(message.body)} B")
    typer.echo(f"{len(messages)} message(s) held", err=as_json)


def _as_dict(message: Message) -> dict[str, object]:
    return {
        "id": message.id,
        "topic": message.topic,
        "key": message.key,
        "size": len(message.body),
        "headers": dict(message.headers),
    }


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
