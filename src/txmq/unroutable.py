"""Messages published while no consumer group had a queue for their topic.

Kafka keeps such a message in its topic, and a group created later reads it (new groups
start at the earliest offset). RabbitMQ routes it, through the deployment exchange's
alternate exchange, into the ``<exchange>.unroutable`` queue; a consumer's
:meth:`~txmq.Adapter.declare` (run by ``Consumer.start()``) re-routes its topics' held
messages to the queues it just bound. This module lists what is held and re-routes it by
hand, e.g. after binding queues with ``broker.declare([...])`` from a deployment script:
``txmq unroutable list|reroute --broker URL``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import typer

from txmq.adapters import Adapter, connect
from txmq.config import ENV_BROKER_URL, redact
from txmq.errors import TxmqError
from txmq.message import Message


def held(broker: Adapter, *, limit: int = 100, timeout: float = 5.0) -> list[Message]:
    """Up to ``limit`` held messages, oldest first, left where they are (none on Kafka)."""
    queue = broker.unroutable_queue
    if queue is None:
        return []
    deliveries = broker.read_queue(queue, limit=limit, timeout=timeout)
    return [d.message for d in deliveries if d.message is not None]


def reroute(broker: Adapter, topics: Iterable[str] | None = None) -> int:
    """Publish the held messages of ``topics`` (all with ``None``) to their topics again;
    return how many. One whose topic still has no queue is held again."""
    return broker.reroute_unroutable(topics)


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
