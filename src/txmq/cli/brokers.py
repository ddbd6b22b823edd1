"""``txmq brokers up|down|status|engine``: test brokers from the command line.

The root command imports this module only when ``txmq brokers`` runs (it loads the
provisioning, and through it docker and testcontainers); the group's help is the root's.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import sys
from typing import Annotated

import typer

from txmq.config import redact
from txmq.errors import MissingDependency
from txmq.testing.provision import cluster, engine, lifecycle
from txmq.testing.provision.common import BROKERS, Broker, ProvisionError
from txmq.testing.provision.state import Running

app = typer.Typer(no_args_is_help=True)


class ModeChoice(enum.StrEnum):
    auto = "auto"
    container = "container"
    process = "process"


class BrokerChoice(enum.StrEnum):
    rabbitmq = "rabbitmq"
    kafka = "kafka"
    postgres = "postgres"
    mariadb = "mariadb"


def _brokers(only: list[BrokerChoice] | None) -> list[Broker]:
    chosen = {choice.value for choice in only or []}
    return [b for b in BROKERS if not chosen or b in chosen]


def _fail(exc: ProvisionError | MissingDependency) -> typer.Exit:
    typer.echo(f"error: {redact(str(exc))}", err=True)
    return typer.Exit(1)


@app.callback()
def _logging(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
) -> None:
    # Progress goes to stderr, so stdout stays clean for --print-env.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="txmq: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        for noisy in ("pika", "urllib3", "docker", "testcontainers"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def up(
    mode: Annotated[
        ModeChoice,
        typer.Option(help="auto: containers where a Docker engine can be used, else processes."),
    ] = ModeChoice.auto,
    print_env: Annotated[
        bool, typer.Option("--print-env", help='Print TXMQ_TEST_*=URL lines for eval "$(...)".')
    ] = False,
    only: Annotated[
        list[BrokerChoice] | None, typer.Option(help="Start only this broker (repeatable).")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for each broker.")
    ] = lifecycle.READY_TIMEOUT,
    nodes: Annotated[
        int,
        typer.Option(
            "--cluster",
            help=(
                "3: RabbitMQ and Kafka as three-node clusters (processes, ports from "
                f"${cluster.PORT_BASE_ENV}, default {cluster.DEFAULT_PORT_BASE}); PostgreSQL "
                "stays one server."
            ),
        ),
    ] = 1,
) -> None:
    """Start the brokers (detached) and wait until each answers its protocol."""
    if nodes not in (1, cluster.SIZE):
        typer.echo(f"error: --cluster takes 1 or {cluster.SIZE}, not {nodes}", err=True)
        raise typer.Exit(2)
    if nodes > 1 and mode is ModeChoice.container:
        typer.echo("error: clusters run as processes only: use --mode process or auto", err=True)
        raise typer.Exit(2)
    chosen = _brokers(only)
    clustered = [b for b in cluster.CLUSTER_BROKERS if b in chosen] if nodes > 1 else []
    try:
        endpoints = lifecycle.up(
            mode=mode.value, brokers=[b for b in chosen if b not in clustered], timeout=timeout
        )
        if clustered:
            urls = cluster.up(clustered, cluster.ClusterPorts.from_env(), timeout=timeout + 60)
            endpoints = dataclasses.replace(
                endpoints,
                rabbitmq_url=urls.get("rabbitmq", endpoints.rabbitmq_url),
                kafka_url=urls.get("kafka", endpoints.kafka_url),
            )
    except (ProvisionError, MissingDependency) as exc:
        raise _fail(exc) from exc
    if print_env:
        for line in endpoints.env_lines():
            typer.echo(line)
    else:
        for name, url in endpoints.env().items():
            typer.echo(f"{name}={redact(url)}")


@app.command()
def down(
    only: Annotated[
        list[BrokerChoice] | None, typer.Option(help="Stop only this broker (repeatable).")
    ] = None,
) -> None:
    """Stop what 'up' started, and nothing else."""
    chosen = _brokers(only)
    try:
        stopped = lifecycle.down(chosen)
        stopped += cluster.down([b for b in cluster.CLUSTER_BROKERS if b in chosen])
    except (ProvisionError, MissingDependency) as exc:
        raise _fail(exc) from exc
    for record in stopped:
        typer.echo(f"stopped {record.broker} ({record.mode})")
    if not stopped:
        typer.echo("nothing to stop")


@app.command()
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per broker and line.")
    ] = False,
) -> None:
    """Say what 'up' started, where it runs, and whether it is still up.

    Exits 0 when at least one broker is recorded and all recorded ones run, else 1.
    """
    try:
        found = lifecycle.status() + cluster.status()
    except (ProvisionError, MissingDependency) as exc:
        raise _fail(exc) from exc
    if not found:
        typer.echo("no brokers started by 'txmq brokers up'", err=as_json)
        raise typer.Exit(1)
    for record, running in found:
        if as_json:
            typer.echo(json.dumps(_as_dict(record, running=running)))
            continue
        if record.mode == "container":
            where = f"container {(record.container_id or '')[:12]} ({record.image})"
        else:
            where = f"pids {','.join(map(str, record.pgids))} in {record.run_dir}"
        state_text = "running" if running else "NOT RUNNING"
        typer.echo(f"{record.broker:<9} {state_text:<11} {redact(record.url):<45} {where}")
    if not all(running for _, running in found):
        raise typer.Exit(1)


def _as_dict(record: Running, *, running: bool) -> dict[str, object]:
    return {
        "broker": record.broker,
        "running": running,
        "mode": record.mode,
        "url": redact(record.url),
        "container_id": record.container_id,
        "image": record.image,
        "pgids": list(record.pgids),
        "run_dir": record.run_dir,
    }


@app.command("engine")
def engine_command() -> None:
    """Make a Docker engine answer: install docker.io and start dockerd where possible."""
    try:
        before = engine.ensure()
    except (ProvisionError, MissingDependency) as exc:
        raise _fail(exc) from exc
    typer.echo("docker engine running" + ("" if before is engine.Engine.RUNNING else " (started)"))
