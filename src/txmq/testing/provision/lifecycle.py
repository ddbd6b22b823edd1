"""Starting and stopping brokers in the chosen mode, and the ``up``/``down``/``status`` verbs."""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from txmq.config import redact
from txmq.errors import MissingDependency
from txmq.testing.provision import containers, engine, processes, state
from txmq.testing.provision.common import (
    BROKERS,
    LOOPBACK,
    URL_ENV,
    Broker,
    Mode,
    Ports,
    ProvisionError,
    RequestedMode,
    url_for,
)
from txmq.testing.provision.readiness import tcp_open
from txmq.testing.provision.state import Running

log = logging.getLogger("txmq.provision")

READY_TIMEOUT = 180.0


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the provisioned brokers answer; ``None`` for a broker that was not asked for."""

    rabbitmq_url: str | None = None
    kafka_url: str | None = None
    database_url: str | None = None
    mysql_url: str | None = None

    @classmethod
    def from_records(cls, records: Mapping[Broker, Running]) -> Endpoints:
        urls = {broker: record.url for broker, record in records.items()}
        return cls(
            urls.get("rabbitmq"), urls.get("kafka"), urls.get("postgres"), urls.get("mariadb")
        )

    def env(self) -> dict[str, str]:
        """``TXMQ_TEST_*`` variables the pytest plugin reads."""
        urls: dict[Broker, str | None] = {
            "rabbitmq": self.rabbitmq_url,
            "kafka": self.kafka_url,
            "postgres": self.database_url,
            "mariadb": self.mysql_url,
        }
        return {URL_ENV[broker]: url for broker, url in urls.items() if url is not None}

    def env_lines(self) -> list[str]:
        """``NAME=value`` lines that work with both ``eval "$(...)"`` and ``export $(...)``."""
        return [f"{name}={shlex.quote(value)}" for name, value in self.env().items()]


def resolve_mode(requested: RequestedMode, probe: Callable[[], engine.Engine]) -> Mode:
    """The mode ``auto`` stands for: containers wherever a Docker engine can be had.

    ``probe`` is only called for ``auto``; it says what can be done about an engine.
    """
    if requested != "auto":
        return requested
    return "container" if probe().usable else "process"


def _start_container(broker: Broker, ports: Ports, timeout: float, owner: int | None) -> Running:
    before = engine.ensure()
    if before is not engine.Engine.RUNNING:
        log.info("started dockerd (it was %s); its log is %s", before.value, engine.dockerd_log())
    return containers.start(broker, ports, timeout=timeout, owner=owner)


_PORT_FIELDS: Mapping[Broker, tuple[str, ...]] = {
    "rabbitmq": ("rabbitmq", "rabbitmq_dist", "rabbitmq_epmd"),
    "kafka": ("kafka", "kafka_controller"),
    "postgres": ("postgres",),
    "mariadb": ("mariadb",),
}


def _check_ports_free(broker: Broker, ports: Ports) -> None:
    for name in _PORT_FIELDS[broker]:
        port = getattr(ports, name)
        if tcp_open(LOOPBACK, port):
            raise ProvisionError(
                f"{broker}: {LOOPBACK}:{port} is already in use; "
                f"choose another port with TXMQ_PORT_{name.upper()}"
            )


def start(
    broker: Broker,
    mode: RequestedMode,
    ports: Ports,
    *,
    timeout: float = READY_TIMEOUT,
    owner: int | None = None,
) -> Running:
    """Start one broker and wait until it answers its protocol.

    ``auto`` tries a container first and falls back to processes if that fails (saying
    why in the log); ``container`` and ``process`` try only that. ``owner``: the pid of
    the process the broker belongs to (a test session); a container left behind when that
    process dies without stopping it is removed by the next start (brokers run as
    processes are not: a ``kill -9`` of their owner leaves them to ``txmq brokers down``
    or the machine's end).

    Raises:
        ProvisionError: the broker could not be started (every reason tried is given).
    """
    if mode == "env":
        raise ProvisionError(f"mode env starts nothing: set {URL_ENV[broker]}")
    _check_ports_free(broker, ports)
    resolved = resolve_mode(mode, engine.probe)
    started = time.monotonic()
    if resolved == "container":
        try:
            record = _start_container(broker, ports, timeout, owner)
        except (ProvisionError, MissingDependency) as exc:
            if mode != "auto":
                raise
            log.warning("%s: container failed, trying a process instead: %s", broker, exc)
            try:
                record = processes.start(broker, ports, timeout=timeout)
            except ProvisionError as fallback:
                raise ProvisionError(f"container: {exc}\nprocess: {fallback}") from fallback
    else:
        record = processes.start(broker, ports, timeout=timeout)
    where = record.image if record.mode == "container" else record.run_dir
    log.info(
        "%s ready as a %s (%s) in %.1f s at %s",
        broker,
        record.mode,
        where,
        time.monotonic() - started,
        redact(record.url),
    )
    return record


def stop(record: Running) -> None:
    """Stop a broker started by :func:`start` (only that container or those processes)."""
    if record.mode == "container":
        containers.stop(record)
    else:
        processes.stop(record)


def alive(record: Running) -> bool:
    return containers.alive(record) if record.mode == "container" else processes.alive(record)


def up(
    *,
    mode: RequestedMode = "auto",
    brokers: Iterable[Broker] = BROKERS,
    ports: Ports | None = None,
    timeout: float = READY_TIMEOUT,
) -> Endpoints:
    """Make the brokers run (detached: they outlive this process) and record them.

    Brokers already started by an earlier ``up`` and still running on the same ports are
    kept; dead ones are cleaned up and started again.

    Raises:
        ProvisionError: a broker could not be started, or one runs in another mode than
            the one asked for (``txmq brokers down`` first).

    Example:
        >>> endpoints = up(mode="process")  # doctest: +SKIP
        >>> endpoints.kafka_url  # doctest: +SKIP
        'kafka://127.0.0.1:21092'
    """
    ports = ports or Ports.from_env()
    wanted = [b for b in BROKERS if b in set(brokers)]
    with state.locked():
        records = state.load()
        for broker in wanted:
            existing = records.get(broker)
            if existing is not None:
                if alive(existing) and existing.url == url_for(broker, ports):
                    if mode not in ("auto", existing.mode):
                        raise ProvisionError(
                            f"{broker} already runs as a {existing.mode}; "
                            "run 'txmq brokers down' first"
                        )
                    log.info("%s already runs as a %s", broker, existing.mode)
                    continue
                log.info("%s from an earlier 'up' is gone or moved; cleaning up", broker)
                stop(existing)
                del records[broker]
                state.save(records)
            records[broker] = start(broker, mode, ports, timeout=timeout)
            state.save(records)
        return Endpoints.from_records({b: records[b] for b in wanted})


def down(brokers: Iterable[Broker] = BROKERS) -> list[Running]:
    """Stop what ``up`` started (nothing else) and forget it; return what was stopped."""
    wanted = set(brokers)
    with state.locked():
        records = state.load()
        stopped = []
        for broker in BROKERS:
            record = records.get(broker)
            if broker in wanted and record is not None:
                stop(record)
                del records[broker]
                state.save(records)
                stopped.append(record)
        return stopped


def status() -> list[tuple[Running, bool]]:
    """Each broker ``up`` started, and whether it still runs."""
    return [(record, alive(record)) for record in state.load().values()]
