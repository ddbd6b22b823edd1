"""``txmq worker`` and ``txmq consume``: the long-running processes (see
:mod:`txmq.process.service` for signals and exit codes)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, NoReturn

import typer
from sqlalchemy import MetaData

from txmq.config import ENV_BROKER_URL, ENV_DATABASE_URL, database_url
from txmq.errors import ConfigurationError
from txmq.process.logs import LogFormat, configure_logging
from txmq.process.service import (
    EXIT_CONFIGURATION,
    ProbeOptions,
    configuration_error,
    fail,
    run_service,
)

MetricsPort = Annotated[
    int | None,
    typer.Option(
        help="Serve /metrics, /healthz and /readyz on this port (0: a free one, printed)."
    ),
]
MetricsHost = Annotated[str, typer.Option(help="Address the probe server binds.")]
StallTimeout = Annotated[
    float,
    typer.Option(help="Seconds a loop may go without a heartbeat before /healthz fails."),
]
LogLevel = Annotated[str, typer.Option(help="Level of txmq's and your loggers.")]
LogFormatOption = Annotated[LogFormat, typer.Option(help="text, or json: one object per line.")]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``30m``, ``24h``, ``7d`` -> timedelta.

    Raises:
        ConfigurationError: anything else.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ConfigurationError(f"bad duration {text!r}: use e.g. 0, 90s, 30m, 24h or 7d")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def worker(
    *,
    group: Annotated[list[str], typer.Option(help="Producer group to serve; repeat for several.")],
    broker: Annotated[
        str | None, typer.Option(envvar=ENV_BROKER_URL, help="Broker URL to publish to.")
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(envvar=ENV_DATABASE_URL, help="SQLAlchemy URL of the outbox."),
    ] = None,
    prefix: Annotated[str, typer.Option(help="Table name prefix of the outbox tables.")] = "txmq_",
    lanes: Annotated[
        int, typer.Option(help="Relay lanes (one DB and broker connection each).")
    ] = 2,
    batch_size: Annotated[int, typer.Option(help="Records per relay batch.")] = 1000,
    retention: Annotated[
        str, typer.Option(help="Keep SENT/ROLLED_BACK records this long (0, 90s, 30m, 24h, 7d).")
    ] = "24h",
    instance_id: Annotated[
        str | None, typer.Option(help="Stable name of this worker (Kafka transactional.id).")
    ] = None,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
    stall_timeout: StallTimeout = 120.0,
    log_level: LogLevel = "INFO",
    log_format: LogFormatOption = LogFormat.TEXT,
) -> None:
    """Relay, check-back and purge for producer groups until SIGTERM/SIGINT (then drain, exit 0).

    Exit 1: a loop died; exit 2: a configuration error (bad URL, refused credentials,
    missing schema). Database and broker outages are waited out.
    """
    from txmq.adapters import connect
    from txmq.database import open_engine
    from txmq.outbox.store import OutboxStore
    from txmq.process.worker import OutboxWorker
    from txmq.sql.tables import make_outbox_tables

    try:
        configure_logging(log_level, log_format)
        store = OutboxStore(
            open_engine(database_url(database)), make_outbox_tables(MetaData(), prefix=prefix)
        )
        service = OutboxWorker(
            adapter=connect(broker),
            store=store,
            groups=group,
            lanes=lanes,
            batch_size=batch_size,
            retention=parse_duration(retention),
            instance_id=instance_id,
        )
    except Exception as exc:
        _exit_configuration(exc)
    probes = ProbeOptions(host=metrics_host, port=metrics_port, stall_timeout=stall_timeout)
    raise typer.Exit(code=run_service(service, "worker", probes))


def consume(
    target: Annotated[
        str, typer.Argument(help="package.module:name of a Consumer, or of a function making one.")
    ],
    *,
    concurrency: Annotated[
        int | None, typer.Option(help="Worker threads, instead of the code's.")
    ] = None,
    prefetch: Annotated[
        int | None, typer.Option(help="Deliveries each worker holds, instead of the code's.")
    ] = None,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
    stall_timeout: StallTimeout = 120.0,
    log_level: LogLevel = "INFO",
    log_format: LogFormatOption = LogFormat.TEXT,
) -> None:
    """Run a Consumer defined in your code until SIGTERM/SIGINT (then finish, exit 0).

    Exit 1: a worker died; exit 2: a configuration error (the consumer cannot be imported,
    refused credentials, missing inbox table).
    """
    from txmq.process.consume import ConsumerService, load_consumer, override

    try:
        configure_logging(log_level, log_format)
        consumer = load_consumer(target)
        override(consumer, concurrency=concurrency, prefetch=prefetch)
    except Exception as exc:
        _exit_configuration(exc)
    probes = ProbeOptions(host=metrics_host, port=metrics_port, stall_timeout=stall_timeout)
    raise typer.Exit(code=run_service(ConsumerService(consumer), "consumer", probes))


def _exit_configuration(exc: Exception) -> NoReturn:
    """Print ``exc`` as one line and leave with exit 2 if it is a configuration error."""
    if isinstance(exc, ValueError | ConfigurationError) or configuration_error(exc) is not None:
        fail(exc)
        raise typer.Exit(code=EXIT_CONFIGURATION) from None
    raise exc
