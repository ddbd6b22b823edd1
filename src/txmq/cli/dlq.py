"""``txmq dlq ...``: list, show, replay and purge a consumer group's dead-letter queue.

Mount on the root command with ``app.add_typer(dlq_app, name="dlq")``. The broker URL
comes from ``--broker`` or ``$TXMQ_BROKER_URL``; it is never printed with its password.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from txmq.cli.progress import progress
from txmq.config import ENV_BROKER_URL, redact
from txmq.consumer.dlq import DeadLetter, DeadLetters
from txmq.errors import TxmqError

dlq_app = typer.Typer(
    help="Inspect, replay and purge a consumer group's dead-letter queue.", no_args_is_help=True
)

BrokerOption = Annotated[
    str | None, typer.Option("--broker", envvar=ENV_BROKER_URL, help="Broker URL.")
]
GroupOption = Annotated[str, typer.Option("--group", help="Consumer group.")]
TopicOption = Annotated[str, typer.Option("--topic", help="Logical topic.")]
LimitOption = Annotated[int, typer.Option(help="Most messages to read.")]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
IncludeReplayedOption = Annotated[
    bool,
    typer.Option(
        "--include-replayed",
        help="Kafka: also letters replayed before (the log keeps them). RabbitMQ: no effect.",
    ),
]


@contextmanager
def _dead_letters(broker: str | None, group: str, topic: str) -> Iterator[DeadLetters]:
    try:
        with DeadLetters(broker, group=group, topic=topic) as dlq:
            yield dlq
    except TxmqError as exc:
        typer.echo(f"error: {redact(str(exc))}", err=True)
        raise typer.Exit(code=1) from None


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds")


def _as_dict(letter: DeadLetter, *, body: bool) -> dict[str, object]:
    message = letter.message
    data: dict[str, object] = {
        "id": message.id,
        "topic": message.topic,
        "key": message.key,
        "error_type": letter.error_type,
        "error_message": letter.error_message,
        "attempts": letter.attempts,
        "first_failure_at": _when(letter.first_failure_at),
        "last_failure_at": _when(letter.last_failure_at),
        "replay_generation": letter.replay_generation,
        "compensation_id": letter.compensation_id,
        "raw": letter.raw,
        "size": len(message.body),
    }
    if body:
        data["headers"] = dict(message.headers)
        data["body"] = message.body.decode(errors="replace")
    return data


@dlq_app.command(name="list")
def list_letters(
    *,
    group: GroupOption,
    topic: TopicOption,
    broker: BrokerOption = None,
    limit: LimitOption = 50,
    as_json: JsonOption = False,
    include_replayed: IncludeReplayedOption = False,
) -> None:
    """List parked messages, oldest first (they stay in the DLQ; replayed ones are not listed).

    ``--json`` prints one object per line. How many were listed goes to stderr, also when
    none were.
    """
    with _dead_letters(broker, group, topic) as dlq:
        letters = dlq.list(limit=limit, include_replayed=include_replayed)
    for letter in letters:
        if as_json:
            typer.echo(json.dumps(_as_dict(letter, body=False)))
        else:
            typer.echo(
                f"{letter.message.id}  attempts={letter.attempts}  "
                f"last={_when(letter.last_failure_at)}  {letter.error_type}: "
                f"{letter.error_message}"
            )
    typer.echo(f"{len(letters)} message(s) in {dlq.queue}", err=True)


@dlq_app.command()
def show(
    message_id: Annotated[str, typer.Argument(help="Id of the parked message.")],
    *,
    group: GroupOption,
    topic: TopicOption,
    broker: BrokerOption = None,
    limit: LimitOption = 1000,
    include_replayed: IncludeReplayedOption = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="The JSON object on one line, not indented.")
    ] = False,
) -> None:
    """Show one parked message as a JSON object: headers, body and why it failed."""
    with _dead_letters(broker, group, topic) as dlq:
        letter = dlq.show(message_id, limit=limit, include_replayed=include_replayed)
    if letter is None:
        typer.echo(f"no message {message_id} among the first {limit} of {dlq.queue}", err=True)
        raise typer.Exit(code=1)
    typer.echo(json.dumps(_as_dict(letter, body=True), indent=None if as_json else 2))


@dlq_app.command()
def replay(
    *,
    group: GroupOption,
    topic: TopicOption,
    message_ids: Annotated[
        list[str] | None, typer.Option("--id", help="Replay only these ids (repeatable).")
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every parked message.")] = False,
    force: Annotated[
        bool, typer.Option(help="Replay compensated messages too (their effect was undone).")
    ] = False,
    include_replayed: Annotated[
        bool,
        typer.Option(
            "--include-replayed",
            help="Kafka: replay letters replayed before, again. RabbitMQ: no effect.",
        ),
    ] = False,
    broker: BrokerOption = None,
    limit: LimitOption = 1000,
) -> None:
    """Send parked messages back to the group, once each (the inbox sees a new generation).

    Exits 1 when an --id was not found among the letters read.
    """
    if not message_ids and not replay_all:
        typer.echo("give --id ID (repeatable) or --all", err=True)
        raise typer.Exit(code=2)
    if message_ids and replay_all:
        typer.echo("give either --id or --all, not both", err=True)
        raise typer.Exit(code=2)
    with (
        _dead_letters(broker, group, topic) as dlq,
        progress(f"replaying {dlq.queue}") as advance,
    ):
        result = dlq.replay(
            None if replay_all else message_ids,
            force=force,
            include_replayed=include_replayed,
            limit=limit,
            progress=advance,
        )
    for message_id in result.replayed:
        typer.echo(f"replayed {message_id}")
    for message_id in result.skipped_compensated:
        typer.echo(f"skipped {message_id}: compensated (use --force to replay anyway)")
    for message_id in result.not_found:
        typer.echo(
            f"not found {message_id}: not among the first {limit} letters of {dlq.queue} "
            "(replayed, purged or mistyped?)",
            err=True,
        )
    typer.echo(f"{len(result.replayed)} replayed", err=True)
    if result.not_found:
        raise typer.Exit(code=1)


@dlq_app.command()
def purge(
    group: GroupOption,
    topic: TopicOption,
    broker: BrokerOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every parked message of the group's DLQ for the topic (replayed ones too)."""
    if not yes:
        typer.confirm(f"delete every message of {group}.{topic}.dlq?", abort=True)
    with _dead_letters(broker, group, topic) as dlq, progress(f"purging {dlq.queue}"):
        count = dlq.purge()
    typer.echo(f"purged {count} message(s) from {dlq.queue}")
