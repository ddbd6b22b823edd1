"""Names, ports, URLs and directories shared by every way of provisioning brokers."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, get_args

from txmq.errors import TxmqError

Broker = Literal["rabbitmq", "kafka", "postgres", "mariadb"]
BROKERS: tuple[Broker, ...] = get_args(Broker)

#: How a broker is run. ``env`` means "someone else runs it; its URL is in the environment".
Mode = Literal["container", "process", "env"]
#: What a caller may ask for; ``auto`` picks containers where a Docker engine can be used.
RequestedMode = Literal["auto", "container", "process", "env"]
REQUESTED_MODES: tuple[RequestedMode, ...] = get_args(RequestedMode)

#: The variables the pytest plugin reads and ``txmq brokers up --print-env`` prints.
URL_ENV: Mapping[Broker, str] = {
    "rabbitmq": "TXMQ_TEST_RABBITMQ_URL",
    "kafka": "TXMQ_TEST_KAFKA_URL",
    "postgres": "TXMQ_TEST_DATABASE_URL",
    "mariadb": "TXMQ_TEST_MYSQL_URL",
}

LOOPBACK = "127.0.0.1"
#: The database a provisioned MariaDB creates at start, named in its URL.
MARIADB_DATABASE = "txmq"


class ProvisionError(TxmqError):
    """A broker could not be installed, built, started, reached or stopped."""


@dataclass(frozen=True, slots=True)
class Ports:
    """Loopback ports of the provisioned brokers.

    The defaults stay clear of the usual ones (5672, 4369, 25672, 9092, 9093, 5432, 3306), so the
    provisioned brokers run beside brokers a developer already has, and below Linux's
    ephemeral range (32768-60999): a port in that range can be taken for a moment by any
    outgoing connection (or its TIME_WAIT) and then refuses the broker's listener. Every
    field can be set from the environment: ``TXMQ_PORT_<FIELD>`` (``TXMQ_PORT_KAFKA=21192``).
    """

    rabbitmq: int = 21672
    #: Erlang distribution port, set explicitly rather than RabbitMQ's AMQP port + 20000.
    rabbitmq_dist: int = 21673
    #: A private epmd, so the node never registers with a system-wide epmd on 4369.
    rabbitmq_epmd: int = 21369
    #: Only the official image runs the management plugin.
    rabbitmq_management: int = 21674
    kafka: int = 21092
    kafka_controller: int = 21093
    postgres: int = 21432
    mariadb: int = 21306

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Ports:
        """Defaults overridden by ``TXMQ_PORT_*`` variables.

        Raises:
            ProvisionError: a variable is not a port number.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for f in fields(cls):
            name = f"TXMQ_PORT_{f.name.upper()}"
            text = environ.get(name)
            if text is None:
                continue
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise ProvisionError(f"{name} must be a port number, not {text!r}")
            values[f.name] = int(text)
        return cls(**values)

    @classmethod
    def free(cls) -> Ports:
        """Ports nothing listens on right now, for brokers private to one test session."""
        sockets = []
        try:
            for _ in fields(cls):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                # Held open until all are chosen, so the ports differ from one another.
                sock.bind((LOOPBACK, 0))
            return cls(*(sock.getsockname()[1] for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()


def url_for(broker: Broker, ports: Ports) -> str:
    """The URL a client uses to reach a provisioned broker on loopback."""
    if broker == "rabbitmq":
        # guest/guest is RabbitMQ's built-in loopback-only account, not a secret.
        return f"rabbitmq://guest:guest@{LOOPBACK}:{ports.rabbitmq}/"
    if broker == "kafka":
        return f"kafka://{LOOPBACK}:{ports.kafka}"
    if broker == "mariadb":
        # root without a password, on loopback only (or a container's own network).
        return f"mysql+pymysql://root@{LOOPBACK}:{ports.mariadb}/{MARIADB_DATABASE}"
    return f"postgresql+psycopg://postgres@{LOOPBACK}:{ports.postgres}/postgres"


def cache_dir() -> Path:
    """Where downloads, image build logs and broker logs are kept (``$TXMQ_CACHE_DIR``)."""
    configured = os.environ.get("TXMQ_CACHE_DIR")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "txmq"


def state_dir() -> Path:
    """Where ``txmq brokers up`` records what it started (``$TXMQ_STATE_DIR``)."""
    configured = os.environ.get("TXMQ_STATE_DIR")
    return Path(configured) if configured else cache_dir()


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def process_start_time(pid: int) -> int:
    """The kernel's start time of ``pid`` (0 where ``/proc`` does not exist)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return -1 if Path("/proc/self").exists() else 0
    return int(stat.rsplit(")", 1)[1].split()[19])
